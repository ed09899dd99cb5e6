//! roomcast's load generator and benchmark tools.
//!
//! The binaries live in `src/bin/`:
//!
//! - `roomcast-bench`: the load generator behind `make bench` and
//!   `make bench-smoke`. It starts a deployment (roomcast, or a Socket.IO or
//!   socketioxide peer, each as nodes behind one Redis), drives it from
//!   worker processes, and reports idle cost, fan-out throughput and latency,
//!   and reconnect storms;
//! - `ws-compare`: WebSocket libraries side by side (memory per idle
//!   connection, echo and fan-out throughput);
//! - `soak` and `chaos`: the long churn and fault runs.
//!
//! The modules below are `roomcast-bench`'s, one concern each:
//!
//! - [`load`]: one client connection speaking roomcast or Socket.IO;
//! - [`worker`]: a worker process running thousands of connections;
//! - [`workers`]: the coordinator's side of the workers (spawn, command, gather);
//! - [`peers`]: starting the servers under test;
//! - [`scenario`]: idle, fanout (and broadcast), storm, smoke and the suite;
//! - [`floor`]: what the machine's kernel alone charges for a fan-out and a
//!   heartbeat, the floor the targets are set against;
//! - [`report`]: Markdown tables, JSON, `docs/benchmarks.md`;
//! - [`net`], [`system`], [`stats`], [`spec`], [`args`]: sockets, `/proc`,
//!   histograms, the messages between coordinator and workers, flags.
//!
//! The client side is tokio + yawc (the WebSocket library the gateway uses):
//! permessage-deflate with no context takeover and a shared pool of
//! compressors, 1 KiB initial buffers, and one small task per connection
//! once it is set up: about 6.5 KiB per idle connection measured (worker
//! RSS at 500 and 3,500 connections), so one worker process holds 15,000
//! connections in about 100 MB.

pub mod args;
pub mod floor;
pub mod load;
pub mod net;
pub mod peers;
pub mod report;
pub mod scenario;
pub mod spec;
pub mod stats;
pub mod system;
pub mod worker;
pub mod workers;

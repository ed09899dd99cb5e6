//! The gateway's side of the presence service, in a crate of its own so a
//! gateway links the client and not the service.
//!
//! - [`api`]: the JSON types of the service's HTTP API, shared by the
//!   service (which re-exports them) and this client, so the two cannot
//!   drift;
//! - [`client`]: [`client::PresenceClient`], which reports a node's
//!   connections as a replayable stream of ops and asks the service
//!   (presence lists, owners, parked sessions) in batches. Its parts, one
//!   concept each, are private modules whose public types `client`
//!   re-exports:
//!   - `sync`: the op queue and the background task that syncs it
//!     (batches, full syncs, retries);
//!   - `queries`: the queries (members, lookups, parks, takes, claims),
//!     with `batch`, how queries asked at once share a request;
//!   - `http`: the HTTP transport and [`client::PresenceError`];
//!   - `options`: [`client::ClientOptions`].

pub mod api;
mod batch;
pub mod client;
mod http;
mod options;
mod queries;
mod sync;

//! What the coordinator and its worker processes say to each other: the
//! plan a worker runs (its first line of standard input), the commands that
//! follow (one JSON line each), and what a worker writes back (one JSON line
//! per message on standard output).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::load::Protocol;

/// Everything a worker process needs to know.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkerPlan {
    /// This worker's index (it picks its source addresses by it).
    pub worker: usize,
    pub protocol: Protocol,
    /// Offer permessage-deflate.
    pub deflate: bool,
    /// The nodes' addresses; groups and publishers name them by index.
    pub nodes: Vec<SocketAddr>,
    pub members: Vec<MemberGroup>,
    pub publishers: Vec<PublisherPlan>,
    /// Size of published payloads, bytes.
    pub payload_bytes: usize,
    /// When set, every member exchanges one message of this many bytes
    /// while it sets up (publishes it and waits for its own copy).
    pub exchange_bytes: Option<usize>,
    /// When set, a member that loses its connection reconnects (and resumes).
    pub failover: Option<Failover>,
    /// Connections set up at once.
    pub connect_concurrency: usize,
    /// Time for one connection to open and say hello, ms.
    pub connect_timeout_ms: u64,
    /// Runtime threads (1: a current-thread runtime).
    pub threads: usize,
    /// The worker leaves by itself after this long.
    pub max_secs: u64,
}

/// `count` members of `room`, connected to node `node`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MemberGroup {
    pub room: u32,
    pub node: usize,
    pub count: usize,
}

/// One publishing connection: it joins its rooms and, during a round,
/// publishes to them in turn.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PublisherPlan {
    pub id: u32,
    pub node: usize,
    pub rooms: Vec<u32>,
    /// Where in its period this publisher sends, as a fraction of the
    /// period (0 ≤ phase < 1). Publishers of one round are spread evenly
    /// (`i / P`), so the total rate arrives evenly spaced rather than as
    /// one burst of every publisher at the same instant.
    #[serde(default)]
    pub phase: f64,
}

/// How members come back after losing their node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Failover {
    /// Nodes to try, in turn.
    pub nodes: Vec<usize>,
    /// Exponential backoff with full jitter (roomcast-client's policy).
    pub backoff_base_ms: u64,
    pub backoff_cap_ms: u64,
    /// A member still not back after this long gives up.
    pub give_up_secs: u64,
}

/// Coordinator → worker.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// Publish (publishers) and measure (members) for one round.
    Round(Round),
    /// A moment to measure resume times from (the kill of a node).
    Mark { at_us: u64 },
    /// Send a [`WorkerReport`] of everything since the last one, and reset.
    Report,
    /// Leave.
    Exit,
}

/// One round of publishing. Times are microseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Round {
    /// Messages per second of each publisher (its rooms in turn).
    pub rate_per_publisher: f64,
    pub start_us: u64,
    pub until_us: u64,
    /// Latency is recorded for messages published in this window, and
    /// deliveries received in it are counted for the rate.
    pub measure_from_us: u64,
    pub measure_until_us: u64,
}

/// Worker → coordinator.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerMsg {
    Ready(Ready),
    Progress(Progress),
    Report(WorkerReport),
}

/// Set-up is over.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Ready {
    pub worker: usize,
    pub members_ok: u64,
    pub members_failed: u64,
    pub publishers_ok: u64,
    pub publishers_failed: u64,
    /// The first few distinct errors, with counts.
    pub errors: Vec<(String, u64)>,
    pub rss_kib: u64,
}

/// Sent every 250 ms.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Progress {
    pub worker: usize,
    /// Members connected now.
    pub members_up: u64,
    /// Members that lost their connection and are coming back.
    pub members_down: u64,
    /// Members gone for good.
    pub members_dead: u64,
    /// Benchmark messages received so far, all rounds.
    pub delivered: u64,
    /// Members that lost their connection so far (with a failover plan).
    pub went_down: u64,
}

/// What members of one room received since the last report.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RoomTally {
    pub room: u32,
    /// Members connected at report time (their counts are in here).
    pub members: u64,
    /// Members gone for good (their counts are not).
    pub dead: u64,
    /// Distinct benchmark messages received, summed over members.
    pub received: u64,
    /// Messages received again (a sequence number already seen).
    pub duplicates: u64,
    /// Sequence numbers skipped when a later one arrived.
    pub gaps: u64,
    /// Messages that arrived after a later one of the same stream.
    pub reordered: u64,
    /// roomcast offsets skipped / seen again.
    pub offset_gaps: u64,
    pub offset_duplicates: u64,
}

/// How members came back after losing their node (the storm).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ResumeTally {
    /// Members that lost their connection.
    pub went_down: u64,
    /// Members back on another node.
    pub came_back: u64,
    /// roomcast: sessions resumed (`resumed: true`), fresh sessions.
    pub sessions_resumed: u64,
    pub fresh_sessions: u64,
    /// roomcast: rooms whose missed messages were replayed, or not.
    pub rooms_recovered: u64,
    pub rooms_not_recovered: u64,
    /// Connection attempts that failed on the way back.
    pub failed_attempts: u64,
    /// Time from the mark to being back, µs, as (value, count) pairs.
    pub back_after_us: Vec<(u64, u64)>,
}

/// Everything since the last report.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct WorkerReport {
    pub worker: usize,
    pub rooms: Vec<RoomTally>,
    /// Messages published, per room.
    pub published: Vec<(u32, u64)>,
    /// Publishers whose connection ended.
    pub publishers_dead: u64,
    /// Publish→receive latency, µs, as (value, count) pairs.
    pub latency_us: Vec<(u64, u64)>,
    /// Benchmark messages received during the measurement window.
    pub delivered_in_window: u64,
    /// `error` frames from the server, by code.
    pub server_errors: Vec<(String, u64)>,
    /// Client-side errors, by message (first few).
    pub errors: Vec<(String, u64)>,
    pub resume: ResumeTally,
    pub rss_kib: u64,
}

//! [`ClientOptions`]: the settings of a presence client.

use std::time::Duration;

use roomcast_protocol::Data;

/// Settings of a `PresenceClient`; [`ClientOptions::new`] gives the defaults.
#[derive(Clone)]
pub struct ClientOptions {
    /// Base URL of the service, `http://host:port`.
    pub url: String,
    /// The shared `presence.key`, sent as `Authorization: Bearer`.
    pub key: Option<String>,
    pub node_id: String,
    /// This run of the node (a fresh random string per process start).
    pub incarnation: String,
    /// The node's lease; renewed every lease/3.
    pub lease: Duration,
    /// Timeout of `members`, `lookup`, `park` and of each of a take's two
    /// tries (a take waits twice this at most).
    pub timeout: Duration,
    /// Timeout of one sync request (a full sync can be large).
    pub sync_timeout: Duration,
    /// How long ops gather before a batch is sent.
    pub flush_interval: Duration,
    /// Most ops per sync request.
    pub batch_max: usize,
    /// Most ops kept while the service is unreachable; beyond, the queue is
    /// dropped and replaced by a full sync.
    pub max_queue: usize,
    /// A parked record equal to this one is read by a take but left in
    /// place, so it answers every take until it expires (the gateway's
    /// mark of a session the API ended). Against a service older than
    /// that, the first take consumes it.
    pub keep: Option<Data>,
}

impl ClientOptions {
    pub fn new(
        url: impl Into<String>,
        node_id: impl Into<String>,
        incarnation: impl Into<String>,
    ) -> Self {
        ClientOptions {
            url: url.into(),
            key: None,
            node_id: node_id.into(),
            incarnation: incarnation.into(),
            lease: Duration::from_secs(15),
            timeout: Duration::from_secs(1),
            sync_timeout: Duration::from_secs(5),
            flush_interval: Duration::from_millis(50),
            batch_max: 500,
            max_queue: 100_000,
            keep: None,
        }
    }
}

//! Presence across the cluster, seen from a node.
//!
//! Without a presence service (single node) the node's hub is the whole
//! truth: presence lists come from it, and join/leave events go out through
//! the broker to the room's members. With one (cluster), this node tells the
//! service what happens to its connections as a stream of ops (queued and
//! batched; delivery never waits on it), the service answers cluster-wide
//! presence and who owns a session, and it is the service that emits
//! `presence_join`/`presence_leave`, so a session handed over by a draining
//! node, or resumed elsewhere after a crash, does not flap.

use std::sync::{Arc, Weak};
use std::time::Duration;

use roomcast_presence::api::Op;
use roomcast_presence::client::{ClientOptions, PresenceClient};

use crate::config::Config;
use crate::hub::Hub;

/// Starts the client of the presence service, if one is configured. Its
/// snapshot (sent when the service needs this node's full state: at start,
/// after a service restart) is read from the hub.
pub fn start(config: &Config, node_id: &str, hub: &Arc<Hub>) -> Option<PresenceClient> {
    if config.presence.url.is_empty() {
        return None;
    }
    let weak: Weak<Hub> = Arc::downgrade(hub);
    let snapshot = Arc::new(move || match weak.upgrade() {
        Some(hub) => snapshot_ops(&hub),
        None => Vec::new(),
    });
    let mut options = ClientOptions::new(
        config.presence.url.clone(),
        node_id.to_string(),
        uuid::Uuid::new_v4().simple().to_string(),
    );
    options.key = Some(config.presence.key.expose().to_string()).filter(|k| !k.is_empty());
    options.lease = Duration::from_millis(config.presence.lease_ms);
    // The mark of an ended session refuses every resume, not the first.
    options.keep = Some(crate::session::ended_record());
    Some(PresenceClient::start_with(options, snapshot))
}

/// Every live connection and its rooms, as ops.
fn snapshot_ops(hub: &Hub) -> Vec<Op> {
    let mut ops = Vec::new();
    for conn in hub.connections() {
        ops.push(Op::connect(
            conn.session.to_string(),
            conn.user().to_string(),
            conn.identity.info.clone(),
        ));
    }
    for (session, room) in hub.memberships() {
        ops.push(Op::join(session, room));
    }
    ops
}

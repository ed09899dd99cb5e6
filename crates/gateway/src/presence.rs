//! Presence across the cluster, seen from a node: one small interface
//! ([`Presence`]) and two engines, chosen once when the node starts.
//!
//! - [`LocalPresence`] (no presence service): the node's hub is the whole
//!   truth. Presence lists come from it, join/leave events go out through
//!   the broker to the room's members, and a single node's webhooks are
//!   sent from here.
//! - [`ClusterPresence`] (a presence service): the node tells the service
//!   what happens to its connections as a stream of ops (queued and
//!   batched; delivery never waits on it). The service answers cluster-wide
//!   presence and who owns a session, and it is the service that emits
//!   `presence_join`/`presence_leave` and webhooks, so a session handed over
//!   by a draining node, or resumed elsewhere after a crash, does not flap.
//!
//! The node holds an `Arc<dyn Presence>` and never asks which one it has.

use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use roomcast_broker::{Broker, Route};
use roomcast_hooks::webhook::{EndReason, WebhookEvent, Webhooks};
use roomcast_presence_client::api::Op;
use roomcast_presence_client::client::{ClientOptions, ClientStatus, PresenceClient};
use roomcast_protocol::envelope::{Envelope, Kind};
use roomcast_protocol::{ErrorCode, Member, Target};
use tracing::Instrument;

use crate::config::Config;
use crate::conn_handle::ConnHandle;
use crate::error::NodeError;
use crate::hub::Hub;

/// What a node tells presence about its connections, and asks it back.
#[async_trait]
pub trait Presence: Send + Sync + 'static {
    /// A connection passed `hello`.
    fn connected(&self, conn: &ConnHandle);
    /// `room` got its first member on this node.
    fn occupied(&self, room: &str);
    /// `room` has no member left on this node (a join that failed).
    fn vacated(&self, room: &str);
    /// `conn` is a live member of `room` now.
    async fn joined(&self, conn: &ConnHandle, room: &str);
    /// `conn` left `room`; `now_empty`: no member is left on this node.
    async fn left(&self, conn: &ConnHandle, room: &str, now_empty: bool);
    /// `conn` ended while a member of `rooms` (`vacated`: those it left
    /// empty on this node); `draining`: the node is handing its sessions
    /// over.
    async fn closed(
        &self,
        conn: &Arc<ConnHandle>,
        rooms: &[String],
        vacated: &[&str],
        draining: bool,
    );
    /// The room's members on every node.
    async fn members(&self, room: &str) -> Result<Vec<Member>, NodeError>;
    /// The node owning each of `to`'s sessions (one entry per session);
    /// `None` when that is not known (send to every node).
    async fn owners(&self, to: &Target) -> Option<Vec<String>>;
    /// The user's sessions held by other nodes (for the per-user limit);
    /// `None` when that is not known (single node, or no answer).
    async fn sessions_elsewhere(&self, user: &str, node: &str) -> Option<Vec<String>>;
    /// The presence service's client state, when there is one (metrics).
    fn status(&self) -> Option<ClientStatus>;
    /// Waits until what was told has reached the service, at most `within`.
    async fn flush(&self, within: Duration);
}

/// The engine for the node's configuration: [`ClusterPresence`] with
/// `presence.url`, [`LocalPresence`] without.
pub fn start(
    config: &Config,
    node_id: &Arc<str>,
    hub: &Arc<Hub>,
    broker: &Arc<dyn Broker>,
    webhooks: Option<Webhooks>,
) -> (Arc<dyn Presence>, Option<PresenceClient>) {
    match start_client(config, node_id, hub) {
        Some(client) => (
            Arc::new(ClusterPresence {
                hub: hub.clone(),
                client: client.clone(),
                handoff_grace_ms: config.presence.handoff_grace_ms,
            }),
            Some(client),
        ),
        None => (
            Arc::new(LocalPresence {
                node_id: node_id.clone(),
                hub: hub.clone(),
                broker: broker.clone(),
                webhooks,
            }),
            None,
        ),
    }
}

/// Presence kept in the node: its hub, and events through the broker.
pub struct LocalPresence {
    node_id: Arc<str>,
    hub: Arc<Hub>,
    broker: Arc<dyn Broker>,
    /// A single node's webhooks (a cluster's come from the presence service).
    webhooks: Option<Webhooks>,
}

impl LocalPresence {
    fn webhook(&self, event: impl FnOnce() -> WebhookEvent) {
        if let Some(webhooks) = &self.webhooks {
            webhooks.push(event());
        }
    }

    /// Tells the room's members, on every node, that `member` joined or left.
    async fn changed(&self, kind: Kind, room: &str, member: Member) {
        let mut envelope = Envelope::new(
            kind,
            room,
            &self.node_id,
            roomcast_broker::message::now_us(),
        );
        envelope.member = Some(member);
        if let Err(e) = self
            .broker
            .send_control(Route::Room(room.to_string()), envelope)
            .await
        {
            tracing::warn!(error = %e, room, "presence event not sent");
        }
    }
}

#[async_trait]
impl Presence for LocalPresence {
    fn connected(&self, _conn: &ConnHandle) {}

    fn occupied(&self, room: &str) {
        self.webhook(|| WebhookEvent::room_occupied(room));
    }

    fn vacated(&self, room: &str) {
        self.webhook(|| WebhookEvent::room_vacated(room));
    }

    async fn joined(&self, conn: &ConnHandle, room: &str) {
        self.webhook(|| WebhookEvent::presence_join(room, &**conn.user(), &*conn.session));
        self.changed(Kind::PresenceJoin, room, conn.member()).await
    }

    async fn left(&self, conn: &ConnHandle, room: &str, now_empty: bool) {
        self.webhook(|| WebhookEvent::presence_leave(room, &**conn.user(), &*conn.session));
        if now_empty {
            self.webhook(|| WebhookEvent::room_vacated(room));
        }
        self.changed(Kind::PresenceLeave, room, conn.member()).await
    }

    /// The rooms a connection that took the session over holds see no leave.
    async fn closed(
        &self,
        conn: &Arc<ConnHandle>,
        rooms: &[String],
        vacated: &[&str],
        _draining: bool,
    ) {
        let holder = self.hub.with_holder(conn, |holder| holder.map(|h| h.id));
        let left: Vec<&String> = rooms
            .iter()
            .filter(|room| holder.is_none_or(|id| !self.hub.is_member(room, id)))
            .collect();
        for &room in &left {
            self.webhook(|| WebhookEvent::presence_leave(room, &**conn.user(), &*conn.session));
            if vacated.contains(&room.as_str()) {
                self.webhook(|| WebhookEvent::room_vacated(room));
            }
        }
        for room in left {
            self.changed(Kind::PresenceLeave, room, conn.member()).await;
        }
        if holder.is_none() {
            self.webhook(|| {
                WebhookEvent::session_end(&**conn.user(), &*conn.session, EndReason::Closed)
            });
        }
    }

    async fn members(&self, room: &str) -> Result<Vec<Member>, NodeError> {
        Ok(self.hub.members(room))
    }

    async fn sessions_elsewhere(&self, _user: &str, _node: &str) -> Option<Vec<String>> {
        None
    }

    async fn owners(&self, _to: &Target) -> Option<Vec<String>> {
        None
    }

    fn status(&self) -> Option<ClientStatus> {
        None
    }

    async fn flush(&self, _within: Duration) {}
}

/// Presence kept by the presence service, told through its client.
pub struct ClusterPresence {
    hub: Arc<Hub>,
    client: PresenceClient,
    handoff_grace_ms: u64,
}

#[async_trait]
impl Presence for ClusterPresence {
    fn connected(&self, conn: &ConnHandle) {
        self.client.enqueue(Op::connect(
            conn.session.to_string(),
            conn.user().to_string(),
            conn.identity.info.clone(),
        ));
    }

    fn occupied(&self, _room: &str) {}

    fn vacated(&self, _room: &str) {}

    async fn joined(&self, conn: &ConnHandle, room: &str) {
        self.client
            .enqueue(Op::join(conn.session.to_string(), room));
    }

    async fn left(&self, conn: &ConnHandle, room: &str, _now_empty: bool) {
        self.client
            .enqueue(Op::leave(conn.session.to_string(), room));
    }

    /// While the node drains, the session is handed over (its presence is
    /// kept for the grace time, so a client that resumes elsewhere causes
    /// no leave and no join). When a resume has already taken the session
    /// over, it leaves only the rooms its new connection does not hold.
    async fn closed(
        &self,
        conn: &Arc<ConnHandle>,
        rooms: &[String],
        _vacated: &[&str],
        draining: bool,
    ) {
        if conn.has_moved() {
            // Another node holds the session now: what this one would
            // tell the service could only undo that.
            return;
        }
        let session = || conn.session.to_string();
        // Under the session table's lock: ordered against the new
        // connection's `connect` (Hub::register).
        self.hub.with_holder(conn, |holder| match holder {
            Some(holder) => {
                for room in rooms {
                    self.hub.unless_member(room, holder.id, || {
                        self.client.enqueue(Op::leave(session(), room.as_str()))
                    });
                }
            }
            None if draining => self
                .client
                .enqueue(Op::handoff(session(), self.handoff_grace_ms)),
            None => self.client.enqueue(Op::disconnect(session())),
        });
    }

    async fn members(&self, room: &str) -> Result<Vec<Member>, NodeError> {
        self.client
            .members(room)
            .instrument(span("presence.members"))
            .await
            .map_err(|e| NodeError::new(ErrorCode::Unavailable, e.to_string()))
    }

    async fn owners(&self, to: &Target) -> Option<Vec<String>> {
        let users: Vec<String> = to.user.iter().cloned().collect();
        let sessions: Vec<String> = to.session.iter().cloned().collect();
        let owners = self
            .client
            .lookup(&users, &sessions)
            .instrument(span("presence.lookup"))
            .await
            .ok()?;
        Some(owners.into_iter().map(|o| o.node).collect())
    }

    async fn sessions_elsewhere(&self, user: &str, node: &str) -> Option<Vec<String>> {
        let owners = self
            .client
            .lookup(&[user.to_string()], &[])
            .instrument(span("presence.lookup"))
            .await
            .ok()?;
        Some(
            owners
                .into_iter()
                .filter(|o| o.node != node)
                .map(|o| o.session)
                .collect(),
        )
    }

    fn status(&self) -> Option<ClientStatus> {
        Some(self.client.status())
    }

    async fn flush(&self, within: Duration) {
        self.client.flush(within).await;
    }
}

/// A span around a call to the presence service (none when not tracing).
fn span(name: &'static str) -> tracing::Span {
    if crate::telemetry::enabled() {
        tracing::info_span!("presence", call = name)
    } else {
        tracing::Span::none()
    }
}

/// Starts the client of the presence service, if one is configured. Its
/// snapshot (sent when the service needs this node's full state: at start,
/// after a service restart) is read from the hub.
fn start_client(config: &Config, node_id: &str, hub: &Arc<Hub>) -> Option<PresenceClient> {
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

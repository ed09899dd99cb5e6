//! A gateway node: its shared state and the operations that both the
//! WebSocket connections and the HTTP API perform (publish, send, join,
//! leave, presence, disconnect). Follow `publish` from here to find where a
//! message goes: broker append → hub delivery → member outboxes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use roomcast_broker::memory::MemoryBroker;
use roomcast_broker::redis::RedisBroker;
use roomcast_broker::{Broker, HistoryLimits, HistoryRead, Recovery, RoomMessage, Route};
use roomcast_protocol::envelope::{Envelope, Kind};
use roomcast_protocol::{Data, ErrorCode, Member, Since, Target};

use crate::auth::Authenticator;
use crate::config::{Config, ConfigError};
use crate::drain::Drain;
use crate::error::NodeError;
use crate::handle::ConnHandle;
use crate::heartbeat::Registry;
use crate::hub::{Added, Hub};
use crate::limits::{check_room_name, PerIpCounter};
use crate::metrics::Metrics;
use crate::session::{ResumeSigner, SessionStore};
use crate::telemetry;
use roomcast_hooks::webhook::{EndReason, WebhookEvent};
use roomcast_presence::api::Op;
use roomcast_presence::client::PresenceClient;
use tracing::Instrument;

/// The largest encoded room message written directly when compression is
/// off (larger ones go through the connection's task).
const DIRECT_WRITE_MAX: usize = 64 * 1024;

pub struct Node {
    /// The configuration the node started with. What may change while it
    /// runs (limits, proxies, log level) is read from [`Node::live`].
    pub config: Config,
    pub live: crate::live::LiveConfig,
    /// Webhooks of a single node (a cluster's come from the presence service).
    pub webhooks: Option<roomcast_hooks::webhook::Webhooks>,
    pub id: Arc<str>,
    pub hub: Arc<Hub>,
    pub broker: Arc<dyn Broker>,
    memory: Option<Arc<MemoryBroker>>,
    pub redis: Option<Arc<RedisBroker>>,
    pub sessions: SessionStore,
    /// The presence service's client (cluster); `None`: presence is local.
    pub presence: Option<PresenceClient>,
    pub signer: ResumeSigner,
    pub auth: Authenticator,
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    pub drain: Drain,
    pub per_ip: Arc<PerIpCounter>,
    /// Sockets open on this node, including those still before `hello`.
    pub open: AtomicUsize,
    /// Sessions resumed here that other nodes may still hold, by node,
    /// waiting to be told ([`Node::session_moved`]).
    moved: Mutex<HashMap<String, Vec<String>>>,
    /// Failed API key checks per address.
    pub api_failures: crate::api::KeyFailures,
    /// WebSocket settings shared by every connection (one deflate pool).
    pub ws_options: yawc::Options,
    next_conn: AtomicU64,
}

impl Node {
    /// Builds a node from its configuration: the in-memory engine without
    /// `redis.url`, the Redis engine with it. Needs a tokio runtime (it
    /// starts the sweeper, heartbeat and dispatcher tasks).
    pub async fn new(
        config: Config,
        file: Option<std::path::PathBuf>,
    ) -> Result<Arc<Node>, ConfigError> {
        let id: Arc<str> = if config.node.id.is_empty() {
            Arc::from(format!(
                "node-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ))
        } else {
            Arc::from(config.node.id.as_str())
        };
        let metrics = Arc::new(Metrics::default());
        // Direct writes carry only frames sent uncompressed.
        let ws = &config.websocket;
        let direct_below = match (ws.direct_writes, ws.compression) {
            (false, _) => 0,
            (true, true) => ws.compression_threshold,
            (true, false) => DIRECT_WRITE_MAX,
        };
        let hub = Arc::new(Hub::new(
            metrics.clone(),
            config.limits.outbound_queue_frames,
            direct_below,
        ));
        let limits = HistoryLimits {
            size: config.history.size,
            ttl: Duration::from_millis(config.history.ttl_ms),
        };
        let (broker, memory, redis): (Arc<dyn Broker>, _, _) = if config.redis.url.0.is_empty() {
            let memory = MemoryBroker::new(limits);
            memory.set_delivery(hub.clone());
            memory.spawn_sweeper(Duration::from_secs(1));
            (memory.clone(), Some(memory), None)
        } else {
            let redis_config = roomcast_broker::redis::redis_config(
                config.redis.url.expose(),
                &config.redis.tls_ca_file,
            )
            .map_err(ConfigError)?;
            let redis = RedisBroker::connect(
                redis_config,
                &id,
                limits,
                Duration::from_millis(config.redis.command_timeout_ms),
                Duration::from_millis(config.redis.subscription_check_ms),
            )
            .await
            .map_err(ConfigError)?;
            redis.set_delivery(hub.clone());
            (redis.clone(), None, Some(redis))
        };
        let presence = crate::presence::start(&config, &id, &hub);
        let sessions = match &presence {
            Some(client) => {
                SessionStore::remote(client.clone(), Duration::from_millis(config.session.ttl_ms))
            }
            None => SessionStore::default(),
        };
        let registry = Arc::new(Registry::new(
            config.ping_interval(),
            Duration::from_millis(config.heartbeat.pong_timeout_ms),
        ));
        registry.spawn_tickers();
        let live = crate::live::LiveConfig::new(config.clone(), file, &id);
        let webhooks = roomcast_hooks::webhook::Webhooks::start(
            config.webhooks.clone(),
            roomcast_hooks::http::Backend::new(),
        );
        let node = Arc::new(Node {
            live,
            webhooks,
            auth: Authenticator::from_config(&config)?,
            signer: ResumeSigner::new(config.auth.resume_secret.expose()),
            id,
            hub,
            broker,
            memory,
            redis,
            sessions,
            presence,
            registry,
            metrics,
            drain: Drain::default(),
            per_ip: Arc::new(PerIpCounter::default()),
            open: AtomicUsize::new(0),
            moved: Mutex::default(),
            api_failures: crate::api::KeyFailures::default(),
            ws_options: crate::server::websocket_options(&config),
            next_conn: AtomicU64::new(1),
            config,
        });
        let (discards, mut discard) = tokio::sync::mpsc::unbounded_channel::<Target>();
        node.hub.set_discards(discards);
        let weak = Arc::downgrade(&node);
        tokio::spawn(async move {
            while let Some(to) = discard.recv().await {
                let Some(node) = weak.upgrade() else { return };
                node.sessions.end(&to).await;
            }
        });
        // Sessions parked in this node's memory (single-node mode) expire
        // here; a cluster's are kept by the presence service, and the node
        // has nothing to sweep.
        if !node.sessions.is_remote() {
            let weak = Arc::downgrade(&node);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    let Some(node) = weak.upgrade() else { return };
                    node.sessions.sweep();
                }
            });
        }
        Ok(node)
    }

    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    pub fn check_room(&self, room: &str) -> Result<(), NodeError> {
        check_room_name(room, self.live.get().config.limits.max_room_name_bytes)
            .map_err(NodeError::bad_request)
    }

    /// Stores `data` in the room's history and delivers it to every member.
    pub async fn publish(
        &self,
        room: &str,
        data: Data,
        from: Option<Member>,
    ) -> Result<Arc<RoomMessage>, NodeError> {
        self.check_room(room)?;
        let span = if telemetry::enabled() {
            tracing::info_span!("publish", room, node = %self.id, offset = tracing::field::Empty)
        } else {
            tracing::Span::none()
        };
        let started = Instant::now();
        let result = async {
            let trace = telemetry::current_traceparent();
            self.broker.publish(room, data, from, trace).await
        }
        .instrument(span.clone())
        .await;
        self.metrics
            .broker_publish
            .observe_us(started.elapsed().as_micros() as u64);
        match result {
            Ok(message) => {
                span.record("offset", message.offset);
                self.metrics.published.inc();
                Ok(message)
            }
            Err(e) => {
                self.metrics.broker_errors.inc();
                Err(e.into())
            }
        }
    }

    /// Delivers a direct message; returns how many connections it reached
    /// (or, on a cluster, how many sessions the presence service knows for
    /// the target). Only the nodes that own those sessions are sent to.
    pub async fn send(
        &self,
        to: &Target,
        data: Data,
        from: Option<Member>,
    ) -> Result<usize, NodeError> {
        if self.hub.targets(to).is_none() {
            return Err(NodeError::bad_request(
                "`to` must have exactly one of `user` or `session`",
            ));
        }
        if self.redis.is_none() {
            return Ok(self.hub.deliver_direct(to, data, from));
        }
        let span = if telemetry::enabled() {
            tracing::info_span!("send", node = %self.id)
        } else {
            tracing::Span::none()
        };
        async {
            let mut envelope = self.envelope(Kind::Direct, "");
            envelope.data = Some(data);
            envelope.from = from;
            envelope.target = Some(to.clone());
            envelope.trace = telemetry::current_traceparent();
            self.route(to, envelope).await
        }
        .instrument(span)
        .await
    }

    /// Sends a control envelope to the nodes owning `to`'s sessions, as the
    /// presence service knows them; to every node when it cannot tell.
    async fn route(&self, to: &Target, envelope: Envelope) -> Result<usize, NodeError> {
        let owners = match &self.presence {
            Some(presence) => {
                let users: Vec<String> = to.user.iter().cloned().collect();
                let sessions: Vec<String> = to.session.iter().cloned().collect();
                presence
                    .lookup(&users, &sessions)
                    .instrument(presence_span("presence.lookup"))
                    .await
                    .ok()
            }
            None => None,
        };
        let Some(owners) = owners else {
            let local = self.hub.targets(to).map(|t| t.len()).unwrap_or(0);
            self.metrics.routed_to_all.inc();
            self.broker.send_control(Route::AllNodes, envelope).await?;
            return Ok(local);
        };
        let mut nodes: Vec<&str> = owners.iter().map(|o| o.node.as_str()).collect();
        nodes.sort_unstable();
        nodes.dedup();
        for node in nodes {
            self.metrics.routed_to_node.inc();
            self.broker
                .send_control(Route::Node(node.to_string()), envelope.clone())
                .await?;
        }
        Ok(owners.len())
    }

    fn envelope(&self, kind: Kind, room: &str) -> Envelope {
        Envelope::new(kind, room, &self.id, roomcast_broker::message::now_us())
    }

    /// Tells the room's members, on every node, that `member` joined or left.
    async fn presence_changed(&self, kind: Kind, room: &str, member: Member) {
        let mut envelope = self.envelope(kind, room);
        envelope.member = Some(member);
        if let Err(e) = self
            .broker
            .send_control(Route::Room(room.to_string()), envelope)
            .await
        {
            tracing::warn!(error = %e, room, "presence event not sent");
        }
    }

    /// Members of a room, on every node.
    pub async fn presence(&self, room: &str) -> Result<Vec<Member>, NodeError> {
        self.check_room(room)?;
        match &self.presence {
            None => Ok(self.hub.members(room)),
            Some(presence) => presence
                .members(room)
                .instrument(presence_span("presence.members"))
                .await
                .map_err(|e| NodeError::new(ErrorCode::Unavailable, e.to_string())),
        }
    }

    /// A connection passed `hello`.
    pub fn connected(&self, conn: &ConnHandle) {
        if let Some(presence) = &self.presence {
            presence.enqueue(Op::connect(
                conn.session.to_string(),
                conn.user().to_string(),
                conn.identity.info.clone(),
            ));
        }
    }

    /// A connection ended: it leaves its rooms. While the node drains, its
    /// session is handed over (its presence is kept for the grace time, so
    /// a client that resumes elsewhere causes no leave and no join).
    ///
    /// When a resume has already taken the session over (the new connection
    /// holds it in the hub), the session goes on: it leaves only the rooms
    /// its new connection does not hold, and is neither disconnected nor
    /// handed over (on one node: no `session_end` webhook; a cluster's
    /// presence service decides that on `disconnect`).
    pub async fn closed(&self, conn: &Arc<ConnHandle>, rooms: Vec<String>) {
        let mut vacated = Vec::new();
        for room in &rooms {
            if self.remove_member(conn.id, room).await == Some(true) {
                vacated.push(room.as_str());
            }
        }
        if let Some(presence) = &self.presence {
            if conn.has_moved() {
                // Another node holds the session now: what this one
                // would tell the service could only undo that.
                return;
            }
            let session = || conn.session.to_string();
            // Under the session table's lock: ordered against the new
            // connection's `connect` (Hub::register).
            self.hub.with_holder(conn, |holder| match holder {
                Some(holder) => {
                    for room in &rooms {
                        self.hub.unless_member(room, holder.id, || {
                            presence.enqueue(Op::leave(session(), room.as_str()))
                        });
                    }
                }
                None if self.drain.is_draining() => presence.enqueue(Op::handoff(
                    session(),
                    self.config.presence.handoff_grace_ms,
                )),
                None => presence.enqueue(Op::disconnect(session())),
            });
            return;
        }
        // One node: the rooms the new connection holds see no leave.
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
            self.presence_changed(Kind::PresenceLeave, room, conn.member())
                .await;
        }
        if holder.is_none() {
            self.webhook(|| {
                WebhookEvent::session_end(&**conn.user(), &*conn.session, EndReason::Closed)
            });
        }
    }

    /// First half of a join: become a (buffering) member, make sure the
    /// node is subscribed, read the room's position and, with `since`, the
    /// missed messages. `None` when the connection was already a member.
    pub async fn begin_join(
        &self,
        conn: &Arc<ConnHandle>,
        room: &str,
        since: Option<&Since>,
        presence: bool,
    ) -> Result<Option<HistoryRead>, NodeError> {
        let subscribed = match self.hub.add_member(room, conn, presence) {
            Added::Already => return Ok(None),
            Added::New { subscribed, first } => {
                if first {
                    self.webhook(|| WebhookEvent::room_occupied(room));
                }
                subscribed
            }
        };
        let broker = self.broker.clone();
        let name = room.to_string();
        let result = async {
            subscribed
                .get_or_try_init(|| async move { broker.subscribe(&name).await })
                .await?;
            self.metrics.history_reads.inc();
            self.broker.read(room, since).await
        }
        .await;
        match result {
            Ok(read) => Ok(Some(read)),
            Err(e) => {
                self.metrics.broker_errors.inc();
                if self.remove_member(conn.id, room).await == Some(true) {
                    self.webhook(|| WebhookEvent::room_vacated(room));
                }
                Err(e.into())
            }
        }
    }

    /// Second half of a join: queue the recovered messages, release the
    /// buffered live ones, tell the room's presence watchers.
    pub async fn finish_join(&self, conn: &Arc<ConnHandle>, room: &str, read: &HistoryRead) {
        match &read.recovery {
            Some(Recovery::Recovered(missed)) => {
                self.metrics.recovered.inc();
                for msg in missed {
                    if conn.send_encoded(msg.frame(conn.codec)).is_err() {
                        break;
                    }
                }
                self.metrics.deliveries.add(missed.len() as u64);
            }
            Some(Recovery::NotRecoverable) => self.metrics.not_recovered.inc(),
            None => {}
        }
        self.hub.activate(room, conn.id, &read.position);
        match &self.presence {
            Some(presence) => presence.enqueue(Op::join(conn.session.to_string(), room)),
            None => {
                self.webhook(|| WebhookEvent::presence_join(room, &**conn.user(), &*conn.session));
                self.presence_changed(Kind::PresenceJoin, room, conn.member())
                    .await
            }
        }
    }

    /// Removes a connection from a room, telling presence watchers.
    pub async fn leave(&self, conn: &Arc<ConnHandle>, room: &str) -> bool {
        let Some(now_empty) = self.remove_member(conn.id, room).await else {
            return false;
        };
        match &self.presence {
            Some(presence) => presence.enqueue(Op::leave(conn.session.to_string(), room)),
            None => {
                self.webhook(|| WebhookEvent::presence_leave(room, &**conn.user(), &*conn.session));
                if now_empty {
                    self.webhook(|| WebhookEvent::room_vacated(room));
                }
                self.presence_changed(Kind::PresenceLeave, room, conn.member())
                    .await
            }
        }
        true
    }

    /// Removes a member; `None` if it was not one, else whether the room is
    /// now empty on this node (it is then unsubscribed).
    async fn remove_member(&self, conn_id: u64, room: &str) -> Option<bool> {
        let now_empty = self.hub.remove_member(room, conn_id)?;
        if now_empty {
            self.broker.unsubscribe(room).await;
        }
        Some(now_empty)
    }

    /// Queues a webhook event (single node with webhooks configured).
    fn webhook(&self, event: impl FnOnce() -> WebhookEvent) {
        if let Some(webhooks) = &self.webhooks {
            webhooks.push(event());
        }
    }

    /// Closes the connections of a user or a session; they cannot resume.
    /// Returns how many were closed (on a cluster: on this node).
    pub async fn disconnect(&self, to: &Target) -> Result<usize, NodeError> {
        if self.hub.targets(to).is_none() {
            return Err(NodeError::new(
                ErrorCode::BadRequest,
                "give exactly one of `user` or `session`",
            ));
        }
        // The session's parked copy goes after the connections are marked
        // (here, or by the owning nodes): a connection the hub no longer
        // lists has parked its session already, one it lists is marked and
        // does not park it, or takes the copy back out (Hub::disconnect).
        let closed = if self.redis.is_none() {
            self.hub.disconnect(to)
        } else {
            let mut envelope = self.envelope(Kind::Disconnect, "");
            envelope.target = Some(to.clone());
            self.route(to, envelope).await?
        };
        self.sessions.end(to).await;
        Ok(closed)
    }

    /// Tells `nodes`, which the presence service listed as holding
    /// `session`, that it resumed here: each closes its connection of the
    /// session, if it still has one, without parking it. The notices wait
    /// [`MOVED_GATHER`] and go out together, one envelope per node and up
    /// to [`MOVED_PER_ENVELOPE`] sessions: a storm of resumes from a
    /// crashed node (whose channel nobody reads) costs a few publishes,
    /// and no resume waits for them.
    pub fn session_moved(self: &Arc<Self>, session: &str, nodes: &[String]) {
        let first = {
            let mut moved = self.moved.lock();
            let first = moved.is_empty();
            for to in nodes {
                moved
                    .entry(to.clone())
                    .or_default()
                    .push(session.to_string());
            }
            first
        };
        if !first {
            return;
        }
        let node = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(MOVED_GATHER).await;
            let Some(node) = node.upgrade() else { return };
            let moved = std::mem::take(&mut *node.moved.lock());
            for (to, sessions) in moved {
                for chunk in sessions.chunks(MOVED_PER_ENVELOPE) {
                    let mut envelope = node.envelope(Kind::Disconnect, "");
                    envelope.data = Some(serde_json::json!({ crate::hub::MOVED: chunk }));
                    if let Err(e) = node
                        .broker
                        .send_control(Route::Node(to.clone()), envelope)
                        .await
                    {
                        tracing::warn!(error = %e, node = %to, sessions = chunk.len(),
                            "resumes not told to the sessions' old node");
                    }
                }
            }
        });
    }

    /// Rooms known to this node (with members or with history).
    pub fn room_count(&self) -> usize {
        match &self.memory {
            Some(m) => m.room_count(),
            None => self.hub.room_count(),
        }
    }
}

/// How long moved-session notices gather before they go out.
const MOVED_GATHER: Duration = Duration::from_millis(5);
/// Most sessions named in one moved-session envelope.
const MOVED_PER_ENVELOPE: usize = 500;

/// A span around a call to the presence service (none when not tracing).
fn presence_span(name: &'static str) -> tracing::Span {
    if telemetry::enabled() {
        tracing::info_span!("presence", call = name)
    } else {
        tracing::Span::none()
    }
}

//! A gateway node: the parts it is made of, and the operations that both
//! the WebSocket connections and the HTTP API perform (publish, send, join,
//! leave, presence, disconnect).
//!
//! The node is the composition root: the modules below it (hub, broker,
//! presence, routing, heartbeat, proxies, live configuration) take only
//! what they use and never name `Node`; the connection tasks and the HTTP
//! handlers above it call its operations. A publish goes from
//! [`Node::publish`] to the broker, which stores it and sends it to every
//! node with members; each node's dispatcher hands it back to its hub in
//! offset order (docs/architecture.md, "Follow a publish").

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use roomcast_broker::memory::MemoryBroker;
use roomcast_broker::redis::RedisBroker;
use roomcast_broker::{Broker, HistoryLimits, HistoryRead, Published, Recent, Recovery, Retention};
use roomcast_protocol::{valid_idempotency_key, Data, ErrorCode, Member, Since, Target};

use crate::auth::{Authenticator, Identity};
use crate::config::{Config, ConfigError};
use crate::conn_handle::ConnHandle;
use crate::drain::Drain;
use crate::error::NodeError;
use crate::heartbeat::Registry;
use crate::hub::{Added, Hub};
use crate::limits::{check_room_name, PerIpCounter};
use crate::metrics::{Metrics, RefreshOutcome};
use crate::node_stats::{ClusterView, NodeStats, Reading};
use crate::presence::Presence;
use crate::routing::Routing;
use crate::session::{ParkedSessions, ResumeSigner};
use crate::telemetry;
use tracing::Instrument;

/// The largest encoded room message written directly when compression is
/// off (larger ones go through the connection's task).
const DIRECT_WRITE_MAX: usize = 64 * 1024;

pub struct Node {
    /// The configuration the node started with. What may change while it
    /// runs (limits, proxies, log level) is read from [`Node::live`].
    pub config: Config,
    pub live: Arc<crate::live_config::LiveConfig>,
    /// History limits per room (namespaces may have their own; a reload
    /// replaces them).
    pub retention: Arc<Retention>,
    /// Webhooks of a single node (a cluster's come from the presence service).
    pub webhooks: Option<roomcast_hooks::webhook::Webhooks>,
    pub id: Arc<str>,
    pub hub: Arc<Hub>,
    pub broker: Arc<dyn Broker>,
    memory: Option<Arc<MemoryBroker>>,
    pub redis: Option<Arc<RedisBroker>>,
    pub sessions: ParkedSessions,
    /// In-node presence, or the presence service's client (cluster).
    pub presence: Arc<dyn Presence>,
    /// Direct messages and disconnects, here or to the owning nodes.
    pub routing: Arc<Routing>,
    pub signer: ResumeSigner,
    pub auth: Authenticator,
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    /// This node's samples of itself, reported to the others.
    pub stats: Arc<NodeStats>,
    pub drain: Drain,
    pub per_ip: Arc<PerIpCounter>,
    /// Sockets open on this node, including those still before `hello`.
    pub open: Arc<AtomicUsize>,
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
            idempotency_window: Duration::from_millis(config.publish.idempotency_window_ms),
        };
        let retention = Retention::new(limits);
        retention.set_namespaces(config.namespace_history(limits.idempotency_window));
        let (broker, memory, redis): (Arc<dyn Broker>, _, _) = if config.redis.url.0.is_empty() {
            let memory = MemoryBroker::with_retention(retention.clone());
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
                retention.clone(),
                Duration::from_millis(config.redis.command_timeout_ms),
                Duration::from_millis(config.redis.subscription_check_ms),
            )
            .await
            .map_err(ConfigError)?;
            redis.set_delivery(hub.clone());
            (redis.clone(), None, Some(redis))
        };
        let webhooks = roomcast_hooks::webhook::Webhooks::start(
            config.webhooks.clone(),
            roomcast_hooks::http::Backend::new(),
        );
        let (presence, client) =
            crate::presence::start(&config, &id, &hub, &broker, webhooks.clone());
        let routing = Arc::new(Routing::new(
            id.clone(),
            hub.clone(),
            broker.clone(),
            presence.clone(),
            metrics.clone(),
            redis.is_none(),
        ));
        let sessions = match &client {
            Some(client) => {
                let ttl = Duration::from_millis(config.session.ttl_ms);
                let sessions = ParkedSessions::remote(client.clone(), ttl);
                // With no presence replica answering, the node parks and
                // takes sessions in Redis itself (session/parked.rs).
                match &redis {
                    Some(redis) => sessions.with_redis(
                        roomcast_service::parked::ParkedRecords::new(redis.client().clone()),
                        id.clone(),
                    ),
                    None => sessions,
                }
            }
            None => ParkedSessions::default(),
        };
        let registry = Arc::new(Registry::new(
            config.ping_interval(),
            Duration::from_millis(config.heartbeat.pong_timeout_ms),
        ));
        registry.spawn_tickers();
        let live = Arc::new(crate::live_config::LiveConfig::new(
            config.clone(),
            file,
            &id,
        ));
        let stats = NodeStats::new(id.clone(), broker.engine());
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
            routing,
            registry,
            retention,
            metrics,
            stats,
            drain: Drain::default(),
            per_ip: Arc::new(PerIpCounter::default()),
            open: Arc::default(),
            ws_options: crate::websocket::options(&config),
            next_conn: AtomicU64::new(1),
            config,
        });
        node.spawn_refresher();
        let (discards, mut discard) = tokio::sync::mpsc::unbounded_channel::<Target>();
        node.hub.set_discards(discards);
        let weak = Arc::downgrade(&node);
        tokio::spawn(async move {
            while let Some(to) = discard.recv().await {
                let Some(node) = weak.upgrade() else { return };
                node.sessions.end(&to).await;
            }
        });
        let weak = Arc::downgrade(&node);
        node.stats.spawn(node.broker.clone(), move || {
            weak.upgrade().map(|node| node.reading())
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

    /// The session lifecycle over this node's hub and parked sessions.
    pub fn lifecycle(&self) -> crate::session::Lifecycle<'_> {
        crate::session::Lifecycle {
            hub: &self.hub,
            parked: &self.sessions,
            signer: &self.signer,
            node_id: &self.id,
            ttl: Duration::from_millis(self.config.session.ttl_ms),
        }
    }

    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Connections whose token runs out soon go to the refresh proxy
    /// (when one is configured, now or after a reload), one call each.
    fn spawn_refresher(self: &Arc<Self>) {
        let ahead = crate::proxy::refresh_ahead_ms(&self.live.get().proxy);
        let Some(mut queue) = self.registry.refresh_ahead(ahead) else {
            return;
        };
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(conn) = queue.recv().await {
                let Some(node) = weak.upgrade() else { return };
                tokio::spawn(async move {
                    let live = node.live.get_full();
                    match crate::proxy::refresh(&live.proxy, &node.metrics, &conn).await {
                        Some(expires_at) => {
                            conn.extend(expires_at);
                            node.metrics.refresh(RefreshOutcome::ProxyExtended);
                            // Told without an id: the client's own
                            // `refresh` is not needed before then.
                            let told = roomcast_protocol::ServerFrame::Refreshed {
                                id: None,
                                expires_at,
                            };
                            node.metrics.frame_out(&told);
                            let _ = conn.send(&told);
                        }
                        None => node.metrics.refresh(RefreshOutcome::ProxyFailed),
                    }
                });
            }
        });
    }

    /// Whether `user` may open one more connection (for `session`) under
    /// `limits.max_connections_per_user`: its connections here, plus its
    /// sessions the presence service lists on other nodes (none known
    /// while it does not answer). A resumed session does not count twice.
    pub async fn check_user_limit(&self, identity: &Identity, session: &str) -> Result<(), String> {
        let max = self.live.get().config.limits.max_connections_per_user;
        if max == 0 || identity.anonymous {
            return Ok(());
        }
        let user = &*identity.user;
        let mut sessions: std::collections::HashSet<String> = self
            .hub
            .user_sessions(user)
            .iter()
            .map(|s| s.to_string())
            .collect();
        if let Some(elsewhere) = self.presence.sessions_elsewhere(user, &self.id).await {
            sessions.extend(elsewhere);
        }
        sessions.remove(session);
        tracing::debug!(user, held = sessions.len(), max, "per-user limit checked");
        if sessions.len() >= max {
            self.metrics.reject(crate::metrics::Rejection::UserLimit);
            return Err(format!(
                "user {user} already has {max} connection{}",
                if max == 1 { "" } else { "s" }
            ));
        }
        Ok(())
    }

    pub fn check_room(&self, room: &str) -> Result<(), NodeError> {
        check_room_name(room, self.live.get().config.limits.max_room_name_bytes)
            .map_err(NodeError::bad_request)
    }

    /// Stores `data` in the room's history and delivers it to every member;
    /// with an idempotency `key`, once per key and room within the window
    /// (a repeat gets the first one's offset, marked `duplicate`).
    pub async fn publish(
        &self,
        room: &str,
        data: Data,
        from: Option<Member>,
        key: Option<&str>,
    ) -> Result<Published, NodeError> {
        self.check_room(room)?;
        if key.is_some_and(|k| !valid_idempotency_key(k)) {
            return Err(NodeError::bad_request(
                "an idempotency key is 1 to 64 characters of A-Z a-z 0-9 _ . : -",
            ));
        }
        let span = if telemetry::enabled() {
            tracing::info_span!("publish", room, node = %self.id, offset = tracing::field::Empty)
        } else {
            tracing::Span::none()
        };
        let started = Instant::now();
        let result = async {
            let trace = telemetry::current_traceparent();
            self.broker.publish(room, data, from, trace, key).await
        }
        .instrument(span.clone())
        .await;
        self.metrics
            .broker_publish
            .observe_us(started.elapsed().as_micros() as u64);
        match result {
            Ok(published) => {
                span.record("offset", published.offset);
                if published.duplicate {
                    self.metrics.publish_duplicates.inc();
                } else {
                    self.metrics.published.inc();
                }
                Ok(published)
            }
            Err(e) => {
                self.metrics.broker_errors.inc();
                Err(e.into())
            }
        }
    }

    /// Delivers a direct message; see [`Routing::send`].
    pub async fn send(
        &self,
        to: &Target,
        data: Data,
        from: Option<Member>,
    ) -> Result<usize, NodeError> {
        self.routing.send(to, data, from).await
    }

    /// Members of a room, on every node.
    pub async fn presence(&self, room: &str) -> Result<Vec<Member>, NodeError> {
        self.check_room(room)?;
        self.presence.members(room).await
    }

    /// A connection passed `hello`.
    pub fn connected(&self, conn: &ConnHandle) {
        self.presence.connected(conn);
    }

    /// A connection ended: it leaves its rooms, and presence is told (see
    /// [`Presence::closed`]: a session handed over by a drain, or taken
    /// over by a resume, does not flap).
    pub async fn closed(&self, conn: &Arc<ConnHandle>, rooms: Vec<String>) {
        let mut vacated = Vec::new();
        for room in &rooms {
            if self.remove_member(conn.id, room).await == Some(true) {
                vacated.push(room.as_str());
            }
        }
        self.presence
            .closed(conn, &rooms, &vacated, self.drain.is_draining())
            .await;
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
                    self.presence.occupied(room);
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
                    self.presence.vacated(room);
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
        self.presence.joined(conn, room).await;
    }

    /// Removes a connection from a room, telling presence watchers.
    pub async fn leave(&self, conn: &Arc<ConnHandle>, room: &str) -> bool {
        let Some(now_empty) = self.remove_member(conn.id, room).await else {
            return false;
        };
        self.presence.left(conn, room, now_empty).await;
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
        let closed = self.routing.disconnect(to).await?;
        self.sessions.end(to).await;
        Ok(closed)
    }

    /// A session resumed here that `nodes` may still hold; see
    /// [`Routing::session_moved`].
    pub fn session_moved(&self, session: &str, nodes: &[String]) {
        self.routing.session_moved(session, nodes);
    }

    /// The room's latest `limit` messages still in history, with its
    /// position; `None` for a room the broker does not know.
    pub async fn recent(&self, room: &str, limit: usize) -> Result<Option<Recent>, NodeError> {
        self.check_room(room)?;
        self.broker.recent(room, limit).await.map_err(|e| {
            self.metrics.broker_errors.inc();
            e.into()
        })
    }

    /// Every node of the cluster with its latest stats (this one alone on
    /// a single node).
    pub async fn nodes(&self) -> ClusterView {
        self.stats.cluster(&*self.broker).await
    }

    /// What [`NodeStats`] samples once a second.
    fn reading(&self) -> Reading {
        Reading {
            connections: self.registry.len() as u64,
            rooms: self.room_count() as u64,
            published: self.metrics.published.get(),
            delivered: self.metrics.deliveries.get(),
            draining: self.drain.is_draining(),
        }
    }

    /// Rooms known to this node (with members or with history).
    pub fn room_count(&self) -> usize {
        match &self.memory {
            Some(m) => m.room_count(),
            None => self.hub.room_count(),
        }
    }
}

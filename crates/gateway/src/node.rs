//! A gateway node: its shared state and the operations that both the
//! WebSocket connections and the HTTP API perform (publish, send, join,
//! leave, presence, disconnect). Follow `publish` from here to find where a
//! message goes: broker append → hub delivery → member outboxes.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use roomcast_broker::memory::MemoryBroker;
use roomcast_broker::{Broker, HistoryLimits, HistoryRead, Recovery, RoomMessage};
use roomcast_protocol::{Data, ErrorCode, Member, ServerFrame, Since, Target};

use crate::auth::Authenticator;
use crate::config::{Config, ConfigError};
use crate::drain::Drain;
use crate::error::NodeError;
use crate::handle::{ConnHandle, SharedFrame};
use crate::heartbeat::Registry;
use crate::hub::{Added, Hub};
use crate::limits::{check_room_name, PerIpCounter};
use crate::metrics::Metrics;
use crate::session::{ResumeSigner, SessionStore};

pub struct Node {
    pub config: Config,
    pub id: Arc<str>,
    pub hub: Arc<Hub>,
    pub broker: Arc<dyn Broker>,
    memory: Option<Arc<MemoryBroker>>,
    pub sessions: SessionStore,
    pub signer: ResumeSigner,
    pub auth: Authenticator,
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    pub drain: Drain,
    pub per_ip: Arc<PerIpCounter>,
    /// Sockets open on this node, including those still before `hello`.
    pub open: AtomicUsize,
    /// WebSocket settings shared by every connection (one deflate pool).
    pub ws_options: yawc::Options,
    next_conn: AtomicU64,
}

impl Node {
    /// Builds a node from its configuration. Needs a tokio runtime (it
    /// starts the sweeper and heartbeat tasks).
    pub fn new(config: Config) -> Result<Arc<Node>, ConfigError> {
        let id: Arc<str> = if config.node.id.is_empty() {
            Arc::from(format!(
                "node-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ))
        } else {
            Arc::from(config.node.id.as_str())
        };
        if !config.redis.url.is_empty() {
            return Err(ConfigError(
                "redis.url: the Redis broker is not part of this build yet; unset ROOMCAST_REDIS__URL for the single-node mode".into(),
            ));
        }
        let metrics = Arc::new(Metrics::default());
        let hub = Arc::new(Hub::new(
            metrics.clone(),
            config.limits.outbound_queue_frames,
        ));
        let memory = MemoryBroker::new(HistoryLimits {
            size: config.history.size,
            ttl: Duration::from_millis(config.history.ttl_ms),
        });
        memory.set_delivery(hub.clone());
        memory.spawn_sweeper(Duration::from_secs(1));
        let registry = Arc::new(Registry::default());
        registry.spawn_tickers(
            config.ping_interval(),
            Duration::from_millis(config.heartbeat.pong_timeout_ms),
        );
        let node = Arc::new(Node {
            auth: Authenticator::from_config(&config)?,
            signer: ResumeSigner::new(config.auth.resume_secret.expose()),
            id,
            hub,
            broker: memory.clone(),
            memory: Some(memory),
            sessions: SessionStore::default(),
            registry,
            metrics,
            drain: Drain::default(),
            per_ip: Arc::new(PerIpCounter::default()),
            open: AtomicUsize::new(0),
            ws_options: crate::server::websocket_options(&config),
            next_conn: AtomicU64::new(1),
            config,
        });
        let weak = Arc::downgrade(&node);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(node) = weak.upgrade() else { return };
                node.sessions.sweep();
            }
        });
        Ok(node)
    }

    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    pub fn check_room(&self, room: &str) -> Result<(), NodeError> {
        check_room_name(room, self.config.limits.max_room_name_bytes)
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
        let started = Instant::now();
        let result = self.broker.publish(room, data, from).await;
        self.metrics
            .broker_publish
            .observe_us(started.elapsed().as_micros() as u64);
        match result {
            Ok(message) => {
                self.metrics.published.inc();
                Ok(message)
            }
            Err(e) => {
                self.metrics.broker_errors.inc();
                Err(e.into())
            }
        }
    }

    /// Delivers a direct message; returns how many connections it reached.
    pub fn send(&self, to: &Target, data: Data, from: Option<Member>) -> Result<usize, NodeError> {
        let targets = match (&to.user, &to.session) {
            (Some(user), None) => self.hub.by_user(user),
            (None, Some(session)) => self.hub.by_session(session).into_iter().collect(),
            _ => {
                return Err(NodeError::bad_request(
                    "`to` must have exactly one of `user` or `session`",
                ))
            }
        };
        let frame = ServerFrame::Direct { data, from };
        let mut shared = SharedFrame::new(&frame);
        let mut delivered = 0;
        for conn in targets {
            if let Some(bytes) = shared.bytes(conn.codec) {
                if conn.send_encoded(bytes).is_ok() {
                    delivered += 1;
                }
            }
        }
        self.metrics.direct_sent.add(delivered as u64);
        self.metrics.frames_out_by_kind("direct", delivered as u64);
        Ok(delivered)
    }

    /// Members of a room.
    pub fn presence(&self, room: &str) -> Result<Vec<Member>, NodeError> {
        self.check_room(room)?;
        Ok(self.hub.members(room))
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
            Added::New { subscribed } => subscribed,
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
                self.remove_member(conn.id, room).await;
                Err(e.into())
            }
        }
    }

    /// Second half of a join: queue the recovered messages, release the
    /// buffered live ones, tell the room's presence watchers.
    pub fn finish_join(&self, conn: &Arc<ConnHandle>, room: &str, read: &HistoryRead) {
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
        self.hub.activate(room, conn.id, read.position.offset);
        self.hub.presence_event(
            room,
            &ServerFrame::PresenceJoin {
                room: room.to_string(),
                member: conn.member(),
            },
            conn.id,
        );
    }

    /// Removes a connection from a room, telling presence watchers.
    pub async fn leave(&self, conn: &Arc<ConnHandle>, room: &str) -> bool {
        if !self.remove_member(conn.id, room).await {
            return false;
        }
        self.hub.presence_event(
            room,
            &ServerFrame::PresenceLeave {
                room: room.to_string(),
                member: conn.member(),
            },
            conn.id,
        );
        true
    }

    async fn remove_member(&self, conn_id: u64, room: &str) -> bool {
        match self.hub.remove_member(room, conn_id) {
            None => false,
            Some(now_empty) => {
                if now_empty {
                    self.broker.unsubscribe(room).await;
                }
                true
            }
        }
    }

    /// Closes the connections of a user or a session; they cannot resume.
    pub fn disconnect(&self, to: &Target) -> Result<usize, NodeError> {
        let conns = match (&to.user, &to.session) {
            (Some(user), None) => self.hub.by_user(user),
            (None, Some(session)) => {
                self.sessions.forget(session);
                self.hub.by_session(session).into_iter().collect()
            }
            _ => {
                return Err(NodeError::new(
                    ErrorCode::BadRequest,
                    "give exactly one of `user` or `session`",
                ))
            }
        };
        for conn in &conns {
            conn.forget_session.store(true, Ordering::Relaxed);
            conn.outbox
                .close(roomcast_protocol::close::NORMAL, "disconnected by server");
        }
        Ok(conns.len())
    }

    /// Rooms known to this node (with members or with history).
    pub fn room_count(&self) -> usize {
        match &self.memory {
            Some(m) => m.room_count(),
            None => self.hub.room_count(),
        }
    }
}

//! The Redis broker: rooms' offsets, history and fan-out across nodes.
//!
//! - Publish is one Lua script ([`publish.lua`](publish.lua)): next offset,
//!   `XADD … MAXLEN ~ N` into the room's history stream, TTLs, and `PUBLISH`
//!   (or `SPUBLISH` on a Redis Cluster) of the envelope the node encoded,
//!   with the offset and epoch written into it by the script. A room's keys
//!   and channel share the hash tag `{room}`, so they live in one slot.
//! - A node subscribes to a room's channel only while it has local members.
//!   Each node also listens on its own channel and on the all-nodes channel.
//! - One dispatcher task reads every pub/sub message in order. It keeps, per
//!   subscribed room, the last offset delivered: a duplicate is dropped, and a
//!   gap (a message lost by pub/sub, a reconnect, a lagging reader) is filled
//!   from history before the newer message goes out. Losses are counted, and
//!   repaired, never silent.
//! - Commands fail fast while Redis is unreachable (publish answers
//!   `unavailable`; nothing unstored is acked). The clients reconnect by
//!   themselves; the broker, not fred, keeps the channels subscribed
//!   ([`subscriptions`]): it subscribes again whatever Redis no longer holds
//!   (reconnect, failover, slot move), and every room subscribed again is
//!   checked against history, retried until the read succeeds.
//! - Besides rooms, one hash holds every node's latest stats record
//!   ([`node_reports`]), so any node can show the whole cluster.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use fred::prelude::*;
use fred::types::scripts::Script;
use fred::types::Message as PubsubMessage;
use roomcast_protocol::envelope::{names, Envelope, Kind, EPOCH_LEN, EPOCH_POS, OFFSET_POS};
use roomcast_protocol::{Data, Member, Since};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::Notify;

mod history;
mod node_reports;
mod subscriptions;
use history::{decode_all, recover, Reader};
use node_reports::NodeReports;
pub use subscriptions::PubsubHealth;
use subscriptions::Subscriptions;

use crate::message::now_us;
use crate::{
    Broker, BrokerError, Delivery, HistoryRead, NodeReport, Published, Recent, Recovery, Retention,
    RoomMessage, Route,
};

const PUBLISH_LUA: &str = include_str!("publish.lua");
/// How long a room's epoch and offset outlive its last publish or read.
pub(super) const META_TTL: Duration = Duration::from_secs(24 * 3600);
/// Pub/sub messages buffered between fred's reader and the dispatcher.
const PUBSUB_CAPACITY: usize = 1 << 16;

/// Counters of the Redis engine, exported by the gateway as metrics.
#[derive(Default)]
pub struct RedisStats {
    pub errors: AtomicU64,
    pub reconnects: AtomicU64,
    /// Pub/sub messages fred dropped because the dispatcher lagged.
    pub pubsub_lost: AtomicU64,
    /// Messages delivered from history to fill a pub/sub gap.
    pub gap_repaired: AtomicU64,
    /// Messages that could not be repaired (history already trimmed).
    pub gap_unrepaired: AtomicU64,
    pub duplicates_dropped: AtomicU64,
    /// `read.lua` calls (concurrent reads of one room share one).
    pub history_reads: AtomicU64,
    /// Channels subscribed again by the reconciler.
    pub resubscribes: AtomicU64,
    /// Checks that found Redis holding fewer subscriptions than wanted.
    pub subscription_shortfalls: AtomicU64,
    /// Times every wanted channel was held again after some went missing,
    /// and how long those repairs took in total and the last time.
    pub repairs: AtomicU64,
    pub repair_ms_total: AtomicU64,
    pub last_repair_ms: AtomicU64,
    /// Gap repairs whose history read failed (retried).
    pub gap_repair_failures: AtomicU64,
}

/// The last offset delivered to this node's members of one room.
struct Cursor {
    epoch: String,
    last: u64,
}

pub struct RedisBroker {
    node: Arc<str>,
    client: Client,
    cluster: bool,
    publish_script: Script,
    limits: Arc<Retention>,
    /// History reads, coalesced per room.
    reader: Reader,
    /// Every node's stats record.
    node_reports: NodeReports,
    delivery: OnceLock<Arc<dyn Delivery>>,
    /// The channels wanted and the task that keeps them subscribed.
    subscriptions: Arc<Subscriptions>,
    cursors: parking_lot::Mutex<HashMap<String, Cursor>>,
    /// Rooms to check against history (resubscribed, or a failed repair).
    to_repair: parking_lot::Mutex<HashSet<String>>,
    repair: Notify,
    pub stats: Arc<RedisStats>,
}

pub(crate) fn unavailable(stats: &RedisStats, e: impl std::fmt::Display) -> BrokerError {
    stats.errors.fetch_add(1, Relaxed);
    BrokerError::Unavailable(e.to_string())
}

/// Fails at once while `client`'s connection is down (fred would queue the
/// command until the reconnect or the timeout): an outage must answer
/// `unavailable` fast, not hold publishers or joins for the timeout.
pub(super) fn connected(client: &Client, stats: &RedisStats) -> Result<(), BrokerError> {
    if client.is_connected() {
        Ok(())
    } else {
        Err(unavailable(stats, "not connected to Redis"))
    }
}

pub(super) fn new_epoch() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..EPOCH_LEN].to_string()
}

pub(super) fn value_bytes(v: &Value) -> Option<&[u8]> {
    v.as_bytes()
}

pub use roomcast_service::redis::redis_config;

/// The Redis Cluster hash slot of a key or sharded channel (its `{tag}`).
pub fn key_slot(key: &str) -> u16 {
    fred::util::redis_keyslot(key.as_bytes())
}

impl RedisBroker {
    /// Connects to Redis with a configuration from [`redis_config`]. The
    /// broker keeps reconnecting by itself if Redis is down now or later.
    pub async fn connect(
        mut config: Config,
        node: &str,
        limits: Arc<Retention>,
        command_timeout: Duration,
        subscription_check: Duration,
    ) -> Result<Arc<RedisBroker>, String> {
        // Keep retrying the first connection too: a node may start before Redis.
        config.fail_fast = false;
        let cluster = config.server.is_clustered();
        let mut builder = Builder::from_config(config);
        builder
            .with_performance_config(|p| {
                p.default_command_timeout = command_timeout;
                p.broadcast_channel_capacity = PUBSUB_CAPACITY;
            })
            .with_connection_config(|c| {
                c.connection_timeout = Duration::from_secs(2);
                c.internal_command_timeout = Duration::from_secs(2);
                c.max_command_attempts = 1;
                // Named connections: the subscription check finds the
                // subscriber's in CLIENT LIST by the client's id.
                c.auto_client_setname = true;
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 50, 1_000, 2));
        let client = builder.build().map_err(|e| format!("redis.url: {e}"))?;
        // A plain client: the broker tracks and restores its subscriptions
        // itself (see `subscriptions`), so fred's tracking is not wanted.
        let subscriber = builder.build().map_err(|e| format!("redis.url: {e}"))?;
        client.connect();
        subscriber.connect();
        let first_wait = Duration::from_secs(5);
        for (name, ready) in [
            (
                "commands",
                tokio::time::timeout(first_wait, client.wait_for_connect()).await,
            ),
            (
                "pub/sub",
                tokio::time::timeout(first_wait, subscriber.wait_for_connect()).await,
            ),
        ] {
            if !matches!(ready, Ok(Ok(()))) {
                tracing::warn!("redis {name} connection not up yet; retrying in the background");
            }
        }
        let stats = Arc::new(RedisStats::default());
        let client_for_reads = client.clone();
        let messages = subscriber.message_rx();
        let subscriptions = Arc::new(Subscriptions::new(
            subscriber,
            client.clone(),
            cluster,
            node,
            stats.clone(),
        ));
        let retention = limits.clone();
        let broker = Arc::new(RedisBroker {
            node: Arc::from(node),
            client,
            cluster,
            publish_script: Script::from_lua(PUBLISH_LUA),
            limits,
            delivery: OnceLock::new(),
            subscriptions,
            cursors: parking_lot::Mutex::new(HashMap::new()),
            to_repair: parking_lot::Mutex::new(HashSet::new()),
            repair: Notify::new(),
            stats: stats.clone(),
            node_reports: NodeReports::new(client_for_reads.clone(), stats.clone()),
            reader: Reader::new(client_for_reads, retention, stats),
        });
        broker.spawn_dispatcher(messages);
        broker.spawn_reconciler(subscription_check).await;
        Ok(broker)
    }

    /// Connects the broker to the node's hub. Called once at startup.
    pub fn set_delivery(&self, delivery: Arc<dyn Delivery>) {
        let _ = self.delivery.set(delivery);
    }

    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    /// The command connection, for what else the node keeps in the same
    /// Redis (parked sessions while the presence service is down).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// See [`Reader::ensure_connected`] (the same command connection).
    fn ensure_connected(&self) -> Result<(), BrokerError> {
        self.reader.ensure_connected()
    }

    fn publish_command(&self) -> &'static str {
        if self.cluster {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }

    fn to_message(envelope: Envelope) -> Arc<RoomMessage> {
        Arc::new(
            RoomMessage::new(
                Arc::from(envelope.room),
                envelope.offset,
                Arc::from(envelope.epoch),
                envelope.data.unwrap_or(Data::Null),
                envelope.from,
                envelope.ts,
            )
            .with_trace(envelope.trace),
        )
    }

    /// Whether pub/sub holds every channel this node needs.
    pub fn pubsub_health(&self) -> PubsubHealth {
        self.subscriptions.health()
    }

    /// Subscribes the node's own channels (once, now, if Redis is up), then
    /// leaves the subscriptions to the reconciler.
    async fn spawn_reconciler(self: &Arc<Self>, check_every: Duration) {
        let weak = Arc::downgrade(self);
        let resubscribed = move |rooms: Vec<String>| {
            if let Some(broker) = weak.upgrade() {
                broker.to_repair.lock().extend(rooms);
                broker.repair.notify_one();
            }
        };
        let subscriptions = self.subscriptions.clone();
        tokio::spawn(subscriptions.reconcile(check_every, resubscribed));
        // Give the first pass a moment so a node that starts with Redis up
        // is subscribed when `connect` returns.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while !self.pubsub_health().is_healthy() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn spawn_dispatcher(
        self: &Arc<Self>,
        mut messages: tokio::sync::broadcast::Receiver<PubsubMessage>,
    ) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            // Rooms whose history check failed wait this long for another try.
            let mut retry: Option<Duration> = None;
            loop {
                let Some(broker) = weak.upgrade() else { return };
                let wait = retry.unwrap_or(Duration::from_secs(3600));
                tokio::select! {
                    received = messages.recv() => match received {
                        Ok(message) => {
                            if let Some(delivery) = broker.delivery.get() {
                                delivery.backlog(messages.len());
                            }
                            broker.dispatch(message).await
                        }
                        Err(RecvError::Lagged(n)) => {
                            broker.stats.pubsub_lost.fetch_add(n, Relaxed);
                            tracing::warn!(lost = n, "pub/sub reader lagged; repairing from history");
                            let rooms: Vec<String> = broker.cursors.lock().keys().cloned().collect();
                            broker.to_repair.lock().extend(rooms);
                            retry = broker.repair_pending().await;
                        }
                        Err(RecvError::Closed) => return,
                    },
                    _ = broker.repair.notified() => retry = broker.repair_pending().await,
                    _ = tokio::time::sleep(wait), if retry.is_some() => {
                        let before = retry.unwrap_or_default();
                        retry = broker.repair_pending().await.map(|_| (before * 2).min(Duration::from_secs(2)));
                    }
                }
            }
        });
    }

    async fn dispatch(&self, message: PubsubMessage) {
        let Some(bytes) = value_bytes(&message.value) else {
            return;
        };
        let envelope = match Envelope::decode(bytes) {
            Ok(env) => env,
            Err(e) => {
                self.stats.errors.fetch_add(1, Relaxed);
                tracing::warn!(error = %e, channel = %message.channel, "undecodable envelope");
                return;
            }
        };
        if envelope.kind == Kind::Message {
            self.deliver_in_order(envelope).await;
        } else if let Some(delivery) = self.delivery.get() {
            delivery.control(envelope);
        }
    }

    /// Delivers a room message in offset order, filling any gap from history.
    async fn deliver_in_order(&self, envelope: Envelope) {
        let Some(delivery) = self.delivery.get() else {
            return;
        };
        let gap_from = {
            let mut cursors = self.cursors.lock();
            let Some(cursor) = cursors.get_mut(&envelope.room) else {
                return; // no longer subscribed
            };
            if cursor.epoch != envelope.epoch {
                if envelope.offset == 1 {
                    // The room's history was lost and this starts the new one.
                    cursor.epoch = envelope.epoch.clone();
                    cursor.last = 1;
                    None
                } else {
                    // A new epoch already under way: read it from its start.
                    Some((cursor.epoch.clone(), cursor.last))
                }
            } else if envelope.offset <= cursor.last {
                self.stats.duplicates_dropped.fetch_add(1, Relaxed);
                return;
            } else if envelope.offset == cursor.last + 1 {
                cursor.last = envelope.offset;
                None
            } else {
                Some((cursor.epoch.clone(), cursor.last))
            }
        };
        match gap_from {
            None => delivery.deliver(Self::to_message(envelope)),
            Some((epoch, last)) => {
                let room = envelope.room.clone();
                if !self.fill_gap(&room, &epoch, last, Some(envelope)).await {
                    // The message is in history (publish stores before it
                    // publishes): the retry delivers it in order.
                    self.to_repair.lock().insert(room);
                    self.repair.notify_one();
                }
            }
        }
    }

    /// Delivers what history has after `last` for `room`; `newer`, a message
    /// that revealed the gap, is delivered in its place when history no
    /// longer has it. When the room's epoch changed (its history was lost),
    /// the new epoch is delivered from its start. Returns false when history
    /// could not be read: nothing was delivered, and the caller retries.
    async fn fill_gap(&self, room: &str, epoch: &str, last: u64, newer: Option<Envelope>) -> bool {
        let Some(delivery) = self.delivery.get() else {
            return true;
        };
        let mut since = Since {
            offset: last,
            epoch: epoch.to_string(),
        };
        let (position, messages) = match self.reader.read_raw(room, Some(&since)).await {
            Ok((position, _)) if *position.epoch != *epoch => {
                // A new epoch: everything it has is news to our members.
                since = Since {
                    offset: 0,
                    epoch: position.epoch.to_string(),
                };
                match self.reader.read_raw(room, Some(&since)).await {
                    Ok((position, raw)) => (position, decode_all(raw)),
                    Err(e) => return self.gap_read_failed(room, e),
                }
            }
            Ok((position, raw)) => (position, decode_all(raw)),
            Err(e) => return self.gap_read_failed(room, e),
        };
        let mut to_deliver: Vec<Arc<RoomMessage>> =
            match recover(&since, &position, &messages, self.limits.of(room).ttl) {
                Recovery::Recovered(msgs) => {
                    self.stats
                        .gap_repaired
                        .fetch_add(msgs.len() as u64, Relaxed);
                    msgs
                }
                Recovery::NotRecoverable => {
                    // Part of the gap left history: deliver what is still
                    // there, count the rest as lost.
                    let upto = newer.as_ref().map(|e| e.offset).unwrap_or(position.offset);
                    let kept: Vec<Arc<RoomMessage>> = messages
                        .into_iter()
                        .filter(|m| m.offset > since.offset && *m.epoch == *position.epoch)
                        .collect();
                    self.stats.gap_unrepaired.fetch_add(
                        upto.saturating_sub(since.offset + kept.len() as u64),
                        Relaxed,
                    );
                    self.stats
                        .gap_repaired
                        .fetch_add(kept.len() as u64, Relaxed);
                    kept
                }
            };
        if let Some(env) = newer {
            if env.epoch == *position.epoch && !to_deliver.iter().any(|m| m.offset == env.offset) {
                to_deliver.push(Self::to_message(env));
            }
        }
        let mut cursors = self.cursors.lock();
        let Some(cursor) = cursors.get_mut(room) else {
            return true;
        };
        if cursor.epoch != *position.epoch {
            cursor.epoch = position.epoch.to_string();
            cursor.last = 0;
        }
        for msg in to_deliver {
            if msg.offset > cursor.last && *msg.epoch == *cursor.epoch {
                cursor.last = msg.offset;
                delivery.deliver(msg);
            }
        }
        true
    }

    fn gap_read_failed(&self, room: &str, e: BrokerError) -> bool {
        self.stats.gap_repair_failures.fetch_add(1, Relaxed);
        tracing::warn!(error = %e, room, "cannot fill a pub/sub gap from history yet; will retry");
        false
    }

    /// Checks the rooms waiting for it against history. Returns the delay
    /// before the next try when some could not be read.
    async fn repair_pending(&self) -> Option<Duration> {
        let rooms: Vec<String> = self.to_repair.lock().drain().collect();
        let mut failed = Vec::new();
        for room in rooms {
            let cursor = self
                .cursors
                .lock()
                .get(&room)
                .map(|c| (c.epoch.clone(), c.last));
            let Some((epoch, last)) = cursor else {
                continue; // no longer subscribed
            };
            if !self.fill_gap(&room, &epoch, last, None).await {
                failed.push(room);
            }
        }
        if failed.is_empty() {
            return None;
        }
        self.to_repair.lock().extend(failed);
        Some(Duration::from_millis(100))
    }
}

#[async_trait]
impl Broker for RedisBroker {
    async fn publish(
        &self,
        room: &str,
        data: Data,
        from: Option<Member>,
        trace: Option<String>,
        key: Option<&str>,
    ) -> Result<Published, BrokerError> {
        self.ensure_connected()?;
        let ts = now_us();
        let mut envelope = Envelope::new(Kind::Message, room, &self.node, ts);
        envelope.data = Some(data);
        envelope.from = from;
        envelope.trace = trace;
        let encoded = envelope.encode().map_err(|e| unavailable(&self.stats, e))?;
        let mut keys = vec![
            names::room_meta(room),
            names::room_history(room),
            names::room_channel(room),
        ];
        let limits = self.limits.of(room);
        let mut args: Vec<Value> = vec![
            Value::Bytes(encoded.into()),
            new_epoch().into(),
            (limits.size as i64).into(),
            (limits.ttl.as_millis() as i64).into(),
            (META_TTL.as_millis() as i64).into(),
            self.publish_command().into(),
            ((OFFSET_POS + 1) as i64).into(),
            ((EPOCH_POS + 1) as i64).into(),
        ];
        if let Some(key) = key {
            keys.push(names::room_idempotency_key(room, key));
            args.push((limits.idempotency_window.as_millis().max(1) as i64).into());
        }
        let (offset, epoch, duplicate): (u64, String, i64) = self
            .publish_script
            .evalsha_with_reload(&self.client, keys, args)
            .await
            .map_err(|e| unavailable(&self.stats, e))?;
        Ok(Published {
            offset,
            epoch: Arc::from(epoch),
            duplicate: duplicate == 1,
        })
    }

    async fn subscribe(&self, room: &str) -> Result<(), BrokerError> {
        let position = async {
            let (position, _) = self.reader.read_raw(room, None).await?;
            self.cursors.lock().insert(
                room.to_string(),
                Cursor {
                    epoch: position.epoch.to_string(),
                    last: position.offset,
                },
            );
            Ok(())
        };
        self.subscriptions.add_room(room, position).await
    }

    async fn unsubscribe(&self, room: &str) {
        // The cursor goes under the subscriptions' lock, with the channel.
        self.subscriptions
            .remove_room(room, || {
                self.cursors.lock().remove(room);
            })
            .await;
    }

    async fn read(&self, room: &str, since: Option<&Since>) -> Result<HistoryRead, BrokerError> {
        self.reader.read(room, since).await
    }

    async fn recent(&self, room: &str, limit: usize) -> Result<Option<Recent>, BrokerError> {
        self.reader
            .recent(room, limit.min(self.limits.of(room).size))
            .await
    }

    async fn report_node(
        &self,
        node: &str,
        record: Vec<u8>,
        forget_after: Duration,
    ) -> Result<(), BrokerError> {
        self.node_reports.write(node, record, forget_after).await
    }

    async fn node_reports(&self, forget_after: Duration) -> Result<Vec<NodeReport>, BrokerError> {
        self.node_reports.read(forget_after).await
    }

    async fn send_control(&self, route: Route, envelope: Envelope) -> Result<(), BrokerError> {
        let channel = match route {
            Route::Node(node) => names::node_channel(&node),
            Route::AllNodes => names::ALL_NODES.to_string(),
            Route::Room(room) => names::room_channel(&room),
        };
        self.ensure_connected()?;
        let encoded = envelope.encode().map_err(|e| unavailable(&self.stats, e))?;
        let result: Result<i64, Error> = if self.cluster {
            self.client
                .spublish(channel, Value::Bytes(encoded.into()))
                .await
        } else {
            self.client
                .publish(channel, Value::Bytes(encoded.into()))
                .await
        };
        result.map(|_| ()).map_err(|e| unavailable(&self.stats, e))
    }

    fn engine(&self) -> &'static str {
        "redis"
    }
}

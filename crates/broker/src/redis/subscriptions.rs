//! The pub/sub channels a node must hold, and the task that keeps Redis
//! holding them.
//!
//! fred's own resubscription is not trusted. In fred 10.1,
//! `SubscriberClient::resubscribe_all` sends `SUBSCRIBE` with no channel
//! when only sharded channels are tracked, fails on Redis's "wrong number of
//! arguments" and never reaches its `SSUBSCRIBE`s; and a `SUNSUBSCRIBE` the
//! server pushes when a slot moves is dropped without a word (see
//! docs/decisions.md). So the broker keeps the wanted set itself
//! ([`Subscriptions`]): the rooms with local members, the node's own channel
//! and the all-nodes channel. A reconciler task subscribes whatever is not
//! known to be held, with backoff, until nothing is missing:
//!
//! - after every reconnect of the pub/sub connection (everything is missing);
//! - after every periodic check that finds the connections holding fewer
//!   channels than wanted (`CLIENT LIST`: the `sub`/`ssub` counts of the
//!   subscriber's named connections, on every master): a failover, a slot
//!   move, a `CLIENT KILL`;
//! - after a failed subscribe.
//!
//! Rooms subscribed again are handed to the dispatcher, which checks them
//! against history (a message published while the subscription was down is
//! delivered from there, in order).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::prelude::*;
use fred::types::config::Server;
use fred::types::{ClusterHash, CustomCommand};
use roomcast_protocol::envelope::names;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::Notify;

use super::{unavailable, RedisStats};
use crate::BrokerError;

/// Channels subscribed per command while reconciling.
const CHUNK: usize = 256;
/// The longest wait between two attempts at subscribing what is missing.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What the node wants subscribed, and what it knows is not.
#[derive(Default)]
struct Wanted {
    /// Local subscriptions per room (joins of local members).
    rooms: HashMap<String, usize>,
    /// Wanted rooms whose channel is not known to be held.
    missing_rooms: HashSet<String>,
    /// The node's own channels are not known to be held.
    missing_fixed: bool,
    /// When something first went missing (the repair's start).
    since: Option<Instant>,
}

impl Wanted {
    fn mark_all_missing(&mut self) {
        self.missing_rooms = self.rooms.keys().cloned().collect();
        self.missing_fixed = true;
        self.since.get_or_insert_with(Instant::now);
    }

    fn nothing_missing(&self) -> bool {
        self.missing_rooms.is_empty() && !self.missing_fixed
    }
}

/// Whether the node's pub/sub holds what it must (for `/readyz` and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PubsubHealth {
    /// The pub/sub connection is up.
    pub connected: bool,
    /// Rooms with local members whose channel is not known to be held.
    pub rooms_unsubscribed: usize,
    /// The node's own channels (direct messages, all-nodes) are not held.
    pub node_channels_unsubscribed: bool,
}

impl PubsubHealth {
    pub fn is_healthy(&self) -> bool {
        self.connected && self.rooms_unsubscribed == 0 && !self.node_channels_unsubscribed
    }
}

pub(super) struct Subscriptions {
    subscriber: Client,
    /// The command connection, for the `CLIENT LIST` checks.
    commands: Client,
    cluster: bool,
    /// The node's own channel and the all-nodes channel.
    fixed: [String; 2],
    wanted: tokio::sync::Mutex<Wanted>,
    /// Mirrors of the wanted state, read without the lock.
    rooms_missing: std::sync::atomic::AtomicUsize,
    fixed_missing: std::sync::atomic::AtomicBool,
    wake: Notify,
    stats: Arc<RedisStats>,
}

impl Subscriptions {
    pub(super) fn new(
        subscriber: Client,
        commands: Client,
        cluster: bool,
        node: &str,
        stats: Arc<RedisStats>,
    ) -> Subscriptions {
        Subscriptions {
            subscriber,
            commands,
            cluster,
            fixed: [names::node_channel(node), names::ALL_NODES.to_string()],
            wanted: tokio::sync::Mutex::new(Wanted {
                missing_fixed: true,
                since: Some(Instant::now()),
                ..Wanted::default()
            }),
            rooms_missing: 0.into(),
            fixed_missing: true.into(),
            wake: Notify::new(),
            stats,
        }
    }

    pub(super) fn health(&self) -> PubsubHealth {
        PubsubHealth {
            connected: self.subscriber.is_connected(),
            rooms_unsubscribed: self.rooms_missing.load(Relaxed),
            node_channels_unsubscribed: self.fixed_missing.load(Relaxed),
        }
    }

    fn publish_state(&self, wanted: &Wanted) {
        self.rooms_missing
            .store(wanted.missing_rooms.len(), Relaxed);
        self.fixed_missing.store(wanted.missing_fixed, Relaxed);
    }

    /// A local member joined `room`. The first one subscribes its channel,
    /// then runs `then` (reading the room's position) under the same lock,
    /// so no reconcile or unsubscribe interleaves. On failure the room is
    /// not wanted.
    pub(super) async fn add_room(
        &self,
        room: &str,
        then: impl Future<Output = Result<(), BrokerError>>,
    ) -> Result<(), BrokerError> {
        let mut wanted = self.wanted.lock().await;
        let count = wanted.rooms.entry(room.to_string()).or_insert(0);
        *count += 1;
        if *count > 1 {
            return Ok(());
        }
        let channel = names::room_channel(room);
        let result = match self.subscribe(std::slice::from_ref(&channel)).await {
            Ok(()) => then.await,
            Err(e) => Err(unavailable(&self.stats, e)),
        };
        if result.is_err() {
            wanted.rooms.remove(room);
            wanted.missing_rooms.remove(room);
            self.publish_state(&wanted);
            let _ = self.unsubscribe(&[channel]).await;
        }
        result
    }

    /// A local member left `room`; the last one runs `last` and
    /// unsubscribes the room's channel, under the lock.
    pub(super) async fn remove_room(&self, room: &str, last: impl FnOnce()) {
        let mut wanted = self.wanted.lock().await;
        let Some(count) = wanted.rooms.get_mut(room) else {
            return;
        };
        *count -= 1;
        if *count > 0 {
            return;
        }
        last();
        wanted.rooms.remove(room);
        wanted.missing_rooms.remove(room);
        self.publish_state(&wanted);
        if let Err(e) = self.unsubscribe(&[names::room_channel(room)]).await {
            tracing::debug!(error = %e, room, "unsubscribe failed (an extra subscription is harmless)");
        }
    }

    async fn mark_all_missing(&self) {
        let mut wanted = self.wanted.lock().await;
        wanted.mark_all_missing();
        self.publish_state(&wanted);
    }

    /// Runs until the subscriber's event stream closes: subscribes what is
    /// missing after reconnects, failed checks and wake-ups; hands every room
    /// subscribed again to `resubscribed`.
    pub(super) async fn reconcile(
        self: Arc<Self>,
        check_every: Duration,
        resubscribed: impl Fn(Vec<String>),
    ) {
        let mut reconnects = self.subscriber.reconnect_rx();
        let mut tick = tokio::time::interval(check_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut backoff = Duration::from_millis(50);
        loop {
            let missing = !self.health().is_healthy();
            tokio::select! {
                event = reconnects.recv() => match event {
                    Ok(_) | Err(RecvError::Lagged(_)) => {
                        self.stats.reconnects.fetch_add(1, Relaxed);
                        tracing::info!("redis pub/sub reconnected; subscribing every wanted channel again");
                        self.mark_all_missing().await;
                    }
                    Err(RecvError::Closed) => return,
                },
                _ = self.wake.notified() => {}
                _ = tick.tick() => self.check().await,
                _ = tokio::time::sleep(backoff), if missing => {}
            }
            if !self.subscriber.is_connected() {
                // The reconnect event will come; nothing can be subscribed now.
                continue;
            }
            match self.subscribe_missing().await {
                Ok(rooms) => {
                    backoff = Duration::from_millis(50);
                    if !rooms.is_empty() {
                        resubscribed(rooms);
                    }
                }
                Err((rooms, e)) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "cannot subscribe to Redis pub/sub yet");
                    if !rooms.is_empty() {
                        resubscribed(rooms);
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Subscribes every channel known missing, a chunk at a time. Returns
    /// the rooms subscribed again, and the error that stopped it, if any.
    async fn subscribe_missing(&self) -> Result<Vec<String>, (Vec<String>, Error)> {
        let mut done = Vec::new();
        {
            let mut wanted = self.wanted.lock().await;
            if wanted.missing_fixed {
                if let Err(e) = self.subscribe(&self.fixed).await {
                    return Err((done, e));
                }
                self.stats.resubscribes.fetch_add(2, Relaxed);
                wanted.missing_fixed = false;
                self.publish_state(&wanted);
            }
        }
        let rooms: Vec<String> = self
            .wanted
            .lock()
            .await
            .missing_rooms
            .iter()
            .cloned()
            .collect();
        for chunk in rooms.chunks(CHUNK) {
            let mut wanted = self.wanted.lock().await;
            let still: Vec<&String> = chunk
                .iter()
                .filter(|r| wanted.missing_rooms.contains(*r))
                .collect();
            let channels: Vec<String> = still.iter().map(|r| names::room_channel(r)).collect();
            if let Err(e) = self.subscribe(&channels).await {
                return Err((done, e));
            }
            self.stats
                .resubscribes
                .fetch_add(channels.len() as u64, Relaxed);
            for room in still {
                wanted.missing_rooms.remove(room);
                done.push(room.clone());
            }
            self.publish_state(&wanted);
        }
        let mut wanted = self.wanted.lock().await;
        if wanted.nothing_missing() {
            if let Some(since) = wanted.since.take() {
                let took = since.elapsed();
                self.stats.repairs.fetch_add(1, Relaxed);
                self.stats
                    .repair_ms_total
                    .fetch_add(took.as_millis() as u64, Relaxed);
                self.stats
                    .last_repair_ms
                    .store(took.as_millis() as u64, Relaxed);
                if !done.is_empty() {
                    tracing::info!(
                        rooms = done.len(),
                        took_ms = took.as_millis() as u64,
                        "pub/sub subscriptions restored"
                    );
                }
            }
        }
        Ok(done)
    }

    /// Compares what the subscriber's connections hold with what they
    /// should; on a shortfall every channel is subscribed again
    /// (subscribing a held channel changes nothing).
    async fn check(&self) {
        if !self.subscriber.is_connected() {
            self.mark_all_missing().await;
            return;
        }
        let mut wanted = self.wanted.lock().await;
        let expected = wanted.rooms.len() - wanted.missing_rooms.len()
            + if wanted.missing_fixed {
                0
            } else {
                self.fixed.len()
            };
        match self.count_held().await {
            Ok(held) if held < expected => {
                self.stats.subscription_shortfalls.fetch_add(1, Relaxed);
                tracing::warn!(
                    held,
                    expected,
                    "Redis holds fewer of this node's subscriptions than it should; subscribing again"
                );
                wanted.mark_all_missing();
                self.publish_state(&wanted);
                drop(wanted);
                self.wake.notify_one();
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "cannot check pub/sub subscriptions"),
        }
    }

    /// How many channels the subscriber's connections hold, summed over
    /// every master (`CLIENT LIST TYPE pubsub`, the connections fred named
    /// after the client's id).
    async fn count_held(&self) -> Result<usize, Error> {
        let name = format!(" name={} ", self.subscriber.id());
        let field = if self.cluster { "ssub=" } else { "sub=" };
        let command = CustomCommand::new_static("CLIENT", ClusterHash::Random, false);
        let mut listings: Vec<String> = Vec::new();
        if self.cluster {
            let mut servers: Vec<Server> = Vec::new();
            for client in [&self.commands, &self.subscriber] {
                if let Some(state) = client.cached_cluster_state() {
                    for server in state.unique_primary_nodes() {
                        if !servers.contains(&server) {
                            servers.push(server);
                        }
                    }
                }
            }
            for server in servers {
                let listing: String = self
                    .commands
                    .with_cluster_node(server)
                    .custom(command.clone(), vec!["LIST", "TYPE", "pubsub"])
                    .await?;
                listings.push(listing);
            }
        } else {
            listings.push(
                self.commands
                    .custom(command, vec!["LIST", "TYPE", "pubsub"])
                    .await?,
            );
        }
        Ok(listings
            .iter()
            .flat_map(|l| l.lines())
            .filter(|line| line.contains(&name))
            .map(|line| count_field(line, field))
            .sum())
    }

    /// `SUBSCRIBE` (standalone) or `SSUBSCRIBE` per hash slot (cluster).
    async fn subscribe(&self, channels: &[String]) -> Result<(), Error> {
        if channels.is_empty() {
            return Ok(());
        }
        if !self.cluster {
            return self.subscriber.subscribe(channels.to_vec()).await;
        }
        for group in by_slot(channels).into_values() {
            self.subscriber.ssubscribe(group).await?;
        }
        Ok(())
    }

    async fn unsubscribe(&self, channels: &[String]) -> Result<(), Error> {
        if channels.is_empty() {
            return Ok(());
        }
        if !self.cluster {
            return self.subscriber.unsubscribe(channels.to_vec()).await;
        }
        for group in by_slot(channels).into_values() {
            self.subscriber.sunsubscribe(group).await?;
        }
        Ok(())
    }
}

/// Channels grouped by hash slot (one `SSUBSCRIBE` may name one slot only).
fn by_slot(channels: &[String]) -> BTreeMap<u16, Vec<String>> {
    let mut groups: BTreeMap<u16, Vec<String>> = BTreeMap::new();
    for channel in channels {
        groups
            .entry(fred::util::redis_keyslot(channel.as_bytes()))
            .or_default()
            .push(channel.clone());
    }
    groups
}

/// The number after `field` (`sub=`, `ssub=`) in a `CLIENT LIST` line.
fn count_field(line: &str, field: &str) -> usize {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(field))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_list_fields_are_read_by_exact_name() {
        let line = "id=7 addr=127.0.0.1:5 name=fred-abc age=3 sub=2 psub=0 ssub=5 multi=-1";
        assert_eq!(count_field(line, "sub="), 2);
        assert_eq!(count_field(line, "ssub="), 5);
        assert_eq!(count_field(line, "nope="), 0);
    }

    #[test]
    fn channels_of_one_room_share_a_slot_group() {
        let channels = vec![
            names::room_channel("a"),
            names::room_channel("b"),
            names::room_channel("a"),
        ];
        let groups = by_slot(&channels);
        assert_eq!(groups.values().map(Vec::len).sum::<usize>(), 3);
        assert!(groups.values().any(|g| g.len() == 2));
    }
}

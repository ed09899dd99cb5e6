//! The in-memory broker: the single-node engine behind `make run`.
//!
//! Each room has a log guarded by its own lock: publish takes the lock,
//! assigns the next offset, appends to the bounded history and hands the
//! message to the local hub before releasing it, so delivery order is offset
//! order and a concurrent [`Broker::read`] sees either all of a publish or
//! none of it. The epoch is made when the room's log is created; a log is
//! forgotten only when its history is empty and nobody is subscribed, so a
//! process restart (or a long-idle room) shows up as a new epoch.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use roomcast_protocol::{Data, Member, Since};

use crate::message::now_us;
use crate::{
    Broker, BrokerError, Delivery, HistoryLimits, HistoryRead, Position, Published, Recent,
    Recovery, Retention, RoomMessage, Route,
};
use roomcast_protocol::envelope::Envelope;

const SHARDS: usize = 32;

struct RoomLog {
    epoch: Arc<str>,
    last_offset: u64,
    entries: VecDeque<(Instant, Arc<RoomMessage>)>,
    subscribers: usize,
    touched: Instant,
    /// Idempotency keys seen within the window: the offset each got.
    keys: HashMap<Box<str>, u64>,
    /// The same keys, oldest first, with when they were seen.
    key_order: VecDeque<(Instant, Box<str>)>,
}

impl RoomLog {
    fn new() -> Self {
        RoomLog {
            epoch: new_epoch(),
            last_offset: 0,
            entries: VecDeque::new(),
            subscribers: 0,
            touched: Instant::now(),
            keys: HashMap::new(),
            key_order: VecDeque::new(),
        }
    }

    fn trim(&mut self, limits: &HistoryLimits, now: Instant) {
        while let Some((at, _)) = self.key_order.front() {
            if now.duration_since(*at) < limits.idempotency_window {
                break;
            }
            if let Some((_, key)) = self.key_order.pop_front() {
                self.keys.remove(&key);
            }
        }
        while self.entries.len() > limits.size {
            self.entries.pop_front();
        }
        while let Some((at, _)) = self.entries.front() {
            if now.duration_since(*at) > limits.ttl {
                self.entries.pop_front();
            } else {
                break;
            }
        }
    }

    fn position(&self) -> Position {
        Position {
            offset: self.last_offset,
            epoch: self.epoch.clone(),
        }
    }

    /// Messages after `since`, or `NotRecoverable` when any of them is gone.
    fn recover(&self, since: &Since) -> Recovery {
        if *since.epoch != *self.epoch || since.offset > self.last_offset {
            return Recovery::NotRecoverable;
        }
        if since.offset == self.last_offset {
            return Recovery::Recovered(Vec::new());
        }
        match self.entries.front() {
            Some((_, first)) if first.offset <= since.offset + 1 => Recovery::Recovered(
                self.entries
                    .iter()
                    .filter(|(_, m)| m.offset > since.offset)
                    .map(|(_, m)| m.clone())
                    .collect(),
            ),
            _ => Recovery::NotRecoverable,
        }
    }
}

/// A fresh epoch: 16 hex characters, unique per room log.
fn new_epoch() -> Arc<str> {
    let id = uuid::Uuid::new_v4().simple().to_string();
    Arc::from(&id[..16])
}

/// Room logs by name, one map per shard.
type Shard = Mutex<HashMap<Arc<str>, Arc<Mutex<RoomLog>>>>;

/// The single-node broker.
pub struct MemoryBroker {
    shards: Vec<Shard>,
    limits: Arc<Retention>,
    delivery: OnceLock<Arc<dyn Delivery>>,
}

impl MemoryBroker {
    pub fn new(limits: HistoryLimits) -> Arc<Self> {
        Self::with_retention(Retention::new(limits))
    }

    /// With per-namespace history limits.
    pub fn with_retention(limits: Arc<Retention>) -> Arc<Self> {
        Arc::new(MemoryBroker {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            limits,
            delivery: OnceLock::new(),
        })
    }

    /// Connects the broker to the node's hub. Called once at startup.
    pub fn set_delivery(&self, delivery: Arc<dyn Delivery>) {
        let _ = self.delivery.set(delivery);
    }

    fn shard(&self, room: &str) -> &Shard {
        let mut h: u64 = 0xcbf29ce484222325;
        for b in room.bytes() {
            h = (h ^ b as u64).wrapping_mul(0x100000001b3);
        }
        &self.shards[(h as usize) % SHARDS]
    }

    fn log(&self, room: &str) -> (Arc<str>, Arc<Mutex<RoomLog>>) {
        let mut shard = self.shard(room).lock();
        if let Some((name, log)) = shard.get_key_value(room) {
            return (name.clone(), log.clone());
        }
        let name: Arc<str> = Arc::from(room);
        let log = Arc::new(Mutex::new(RoomLog::new()));
        shard.insert(name.clone(), log.clone());
        (name, log)
    }

    /// Drops expired history and forgets rooms with nothing left. Run by a
    /// periodic task; returns how many rooms were forgotten.
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        let mut forgotten = 0;
        for shard in &self.shards {
            shard.lock().retain(|room, log| {
                let limits = self.limits.of(room);
                let mut log = log.lock();
                log.trim(&limits, now);
                let keep = !log.entries.is_empty()
                    || !log.keys.is_empty()
                    || log.subscribers > 0
                    || now.duration_since(log.touched) < limits.ttl;
                forgotten += usize::from(!keep);
                keep
            });
        }
        forgotten
    }

    /// Rooms with a log (for stats).
    pub fn room_count(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// Starts the periodic sweep; it ends when the broker is dropped.
    pub fn spawn_sweeper(self: &Arc<Self>, every: Duration) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match weak.upgrade() {
                    Some(broker) => {
                        broker.sweep();
                    }
                    None => return,
                }
            }
        });
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn publish(
        &self,
        room: &str,
        data: Data,
        from: Option<Member>,
        trace: Option<String>,
        key: Option<&str>,
    ) -> Result<Published, BrokerError> {
        let limits = self.limits.of(room);
        let (name, log) = self.log(room);
        let mut log = log.lock();
        let now = Instant::now();
        log.touched = now;
        if let Some(key) = key {
            log.trim(&limits, now);
            if let Some(&offset) = log.keys.get(key) {
                return Ok(Published {
                    offset,
                    epoch: log.epoch.clone(),
                    duplicate: true,
                });
            }
        }
        log.last_offset += 1;
        let message = Arc::new(
            RoomMessage::new(
                name,
                log.last_offset,
                log.epoch.clone(),
                data,
                from,
                now_us(),
            )
            .with_trace(trace),
        );
        if let Some(key) = key {
            log.keys.insert(key.into(), message.offset);
            log.key_order.push_back((now, key.into()));
        }
        log.entries.push_back((now, message.clone()));
        log.trim(&limits, now);
        if log.subscribers > 0 {
            if let Some(delivery) = self.delivery.get() {
                delivery.deliver(message.clone());
            }
        }
        Ok(Published {
            offset: message.offset,
            epoch: message.epoch.clone(),
            duplicate: false,
        })
    }

    async fn subscribe(&self, room: &str) -> Result<(), BrokerError> {
        let (_, log) = self.log(room);
        let mut log = log.lock();
        log.subscribers += 1;
        log.touched = Instant::now();
        Ok(())
    }

    async fn unsubscribe(&self, room: &str) {
        let (_, log) = self.log(room);
        let mut log = log.lock();
        log.subscribers = log.subscribers.saturating_sub(1);
        log.touched = Instant::now();
    }

    async fn read(&self, room: &str, since: Option<&Since>) -> Result<HistoryRead, BrokerError> {
        let limits = self.limits.of(room);
        let (_, log) = self.log(room);
        let mut log = log.lock();
        let now = Instant::now();
        log.trim(&limits, now);
        log.touched = now;
        Ok(HistoryRead {
            position: log.position(),
            recovery: since.map(|s| log.recover(s)),
        })
    }

    async fn recent(&self, room: &str, limit: usize) -> Result<Option<Recent>, BrokerError> {
        let Some(log) = self.shard(room).lock().get(room).cloned() else {
            return Ok(None);
        };
        let mut log = log.lock();
        log.trim(&self.limits.of(room), Instant::now());
        let skip = log.entries.len().saturating_sub(limit);
        Ok(Some(Recent {
            position: log.position(),
            messages: log
                .entries
                .iter()
                .skip(skip)
                .map(|(_, m)| m.clone())
                .collect(),
        }))
    }

    async fn send_control(&self, _route: Route, envelope: Envelope) -> Result<(), BrokerError> {
        if let Some(delivery) = self.delivery.get() {
            delivery.control(envelope);
        }
        Ok(())
    }

    fn engine(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn broker(size: usize, ttl_ms: u64) -> Arc<MemoryBroker> {
        MemoryBroker::new(HistoryLimits {
            size,
            ttl: Duration::from_millis(ttl_ms),
            idempotency_window: Duration::from_millis(200),
        })
    }

    async fn since(b: &MemoryBroker, room: &str, offset: u64) -> Since {
        let pos = b.read(room, None).await.unwrap().position;
        Since {
            offset,
            epoch: pos.epoch.to_string(),
        }
    }

    #[tokio::test]
    async fn offsets_start_at_one_and_increase_by_one() {
        let b = broker(10, 60_000);
        for expected in 1..=5 {
            let m = b
                .publish("r", json!(expected), None, None, None)
                .await
                .unwrap();
            assert_eq!(m.offset, expected);
        }
    }

    #[tokio::test]
    async fn a_key_is_stored_once_per_room_within_the_window() {
        let b = broker(10, 60_000);
        let first = b
            .publish("r", json!(1), None, None, Some("k1"))
            .await
            .unwrap();
        assert!(!first.duplicate);
        let again = b
            .publish("r", json!(2), None, None, Some("k1"))
            .await
            .unwrap();
        assert_eq!((again.offset, again.duplicate), (first.offset, true));
        assert_eq!(again.epoch, first.epoch);
        // Another room, another key; no key, no check.
        let other = b
            .publish("q", json!(3), None, None, Some("k1"))
            .await
            .unwrap();
        assert!(!other.duplicate);
        let plain = b.publish("r", json!(4), None, None, None).await.unwrap();
        assert_eq!(plain.offset, 2);
        let s = since(&b, "r", 0).await;
        match b.read("r", Some(&s)).await.unwrap().recovery {
            Some(Recovery::Recovered(m)) => {
                assert_eq!(
                    m.iter().map(|m| m.data.clone()).collect::<Vec<_>>(),
                    [json!(1), json!(4)]
                )
            }
            other => panic!("{other:?}"),
        }
        // Past the window the key is new again.
        tokio::time::sleep(Duration::from_millis(250)).await;
        let later = b
            .publish("r", json!(5), None, None, Some("k1"))
            .await
            .unwrap();
        assert_eq!((later.offset, later.duplicate), (3, false));
    }

    #[tokio::test]
    async fn recovery_returns_exactly_the_missed_messages() {
        let b = broker(10, 60_000);
        for i in 1..=6 {
            b.publish("r", json!(i), None, None, None).await.unwrap();
        }
        let s = since(&b, "r", 3).await;
        let read = b.read("r", Some(&s)).await.unwrap();
        assert_eq!(read.position.offset, 6);
        match read.recovery {
            Some(Recovery::Recovered(msgs)) => {
                assert_eq!(msgs.iter().map(|m| m.offset).collect::<Vec<_>>(), [4, 5, 6])
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_gap_evicted_from_history_is_not_recoverable() {
        let b = broker(3, 60_000);
        for i in 1..=6 {
            b.publish("r", json!(i), None, None, None).await.unwrap();
        }
        let s = since(&b, "r", 2).await;
        let read = b.read("r", Some(&s)).await.unwrap();
        assert!(matches!(read.recovery, Some(Recovery::NotRecoverable)));
        let s = since(&b, "r", 3).await;
        let read = b.read("r", Some(&s)).await.unwrap();
        assert!(matches!(read.recovery, Some(Recovery::Recovered(ref m)) if m.len() == 3));
    }

    #[tokio::test]
    async fn another_epoch_or_a_future_offset_is_not_recoverable() {
        let b = broker(10, 60_000);
        b.publish("r", json!(1), None, None, None).await.unwrap();
        let bad_epoch = Since {
            offset: 0,
            epoch: "other".into(),
        };
        let read = b.read("r", Some(&bad_epoch)).await.unwrap();
        assert!(matches!(read.recovery, Some(Recovery::NotRecoverable)));
        let future = since(&b, "r", 9).await;
        let read = b.read("r", Some(&future)).await.unwrap();
        assert!(matches!(read.recovery, Some(Recovery::NotRecoverable)));
    }

    #[tokio::test]
    async fn recent_gives_the_latest_messages_oldest_first_and_creates_no_room() {
        let b = broker(4, 60_000);
        assert!(b.recent("r", 3).await.unwrap().is_none());
        assert_eq!(b.room_count(), 0, "asking created the room");
        for i in 1..=6 {
            b.publish("r", json!(i), None, None, None).await.unwrap();
        }
        let recent = b.recent("r", 3).await.unwrap().unwrap();
        assert_eq!(recent.position.offset, 6);
        let offsets = |r: &Recent| r.messages.iter().map(|m| m.offset).collect::<Vec<_>>();
        assert_eq!(offsets(&recent), [4, 5, 6]);
        // Never more than history holds.
        let all = b.recent("r", 50).await.unwrap().unwrap();
        assert_eq!(offsets(&all), [3, 4, 5, 6]);
    }

    #[tokio::test]
    async fn expired_messages_leave_history() {
        let b = broker(10, 30);
        b.publish("r", json!(1), None, None, None).await.unwrap();
        tokio::time::sleep(Duration::from_millis(60)).await;
        let s = since(&b, "r", 0).await;
        let read = b.read("r", Some(&s)).await.unwrap();
        assert!(matches!(read.recovery, Some(Recovery::NotRecoverable)));
        // Nothing missed since the last offset is still a (trivial) recovery.
        let s = since(&b, "r", 1).await;
        let read = b.read("r", Some(&s)).await.unwrap();
        assert!(matches!(read.recovery, Some(Recovery::Recovered(ref m)) if m.is_empty()));
    }
}

//! Publishing presence events: a bounded queue the request path pushes onto
//! without ever waiting, and one task that drains it into Redis.
//!
//! Each event becomes an inter-node [`Envelope`] (`presence_join` or
//! `presence_leave`, `node: "presence"`, offset 0) published on the room's
//! channel, where every gateway with a member in the room hears it. Events
//! are published in the order the state machine produced them, in pipelined
//! batches on one connection, so a room's join and leave cannot swap. When
//! Redis is down the events wait (up to `events.max_queued`; beyond, the
//! oldest are dropped and counted), and are published once it is back.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use fred::prelude::{ClientLike, PubsubInterface, Value};
use parking_lot::Mutex;
use roomcast_protocol::envelope::{names, Envelope, Kind};
use tokio::sync::Notify;

use crate::metrics::Metrics;
use crate::redis::Redis;
use crate::shutdown::Shutdown;
use crate::state::{Event, EventKind};

/// Events published per pipelined batch.
const BATCH: usize = 256;
/// The `node` of envelopes made here.
pub const NODE: &str = "presence";

/// An event with the time it happened.
#[derive(Debug, Clone)]
struct Stamped {
    event: Event,
    ts: u64,
}

/// Events waiting to be published.
pub struct EventQueue {
    queue: Mutex<VecDeque<Stamped>>,
    notify: Notify,
    capacity: usize,
    metrics: Arc<Metrics>,
}

impl EventQueue {
    pub fn new(capacity: usize, metrics: Arc<Metrics>) -> EventQueue {
        EventQueue {
            queue: Mutex::new(VecDeque::new()),
            notify: Notify::new(),
            capacity,
            metrics,
        }
    }

    /// Queues events, in order, stamped with the current time. Never waits
    /// on Redis. Call it while holding the state lock, so events of
    /// concurrent requests queue in the order the state produced them.
    pub fn push_all(&self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        let ts = now_micros();
        let mut queue = self.queue.lock();
        queue.extend(events.into_iter().map(|event| Stamped { event, ts }));
        let dropped = queue.len().saturating_sub(self.capacity);
        if dropped > 0 {
            queue.drain(..dropped);
            self.metrics.events_dropped.add(dropped as u64);
        }
        drop(queue);
        self.notify.notify_one();
    }

    pub fn len(&self) -> usize {
        self.queue.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn take_batch(&self) -> Vec<Stamped> {
        let mut queue = self.queue.lock();
        let n = queue.len().min(BATCH);
        queue.drain(..n).collect()
    }

    /// Puts back, at the front and in order, events that were not published.
    fn requeue(&self, events: Vec<Stamped>) {
        let mut queue = self.queue.lock();
        for event in events.into_iter().rev() {
            queue.push_front(event);
        }
        let dropped = queue.len().saturating_sub(self.capacity);
        if dropped > 0 {
            queue.drain(..dropped);
            self.metrics.events_dropped.add(dropped as u64);
        }
    }
}

/// The envelope announcing `event`.
pub fn envelope(event: &Event, ts: u64) -> Envelope {
    let kind = match event.kind {
        EventKind::Join => Kind::PresenceJoin,
        EventKind::Leave => Kind::PresenceLeave,
    };
    let mut env = Envelope::new(kind, &event.room, NODE, ts);
    env.member = Some(event.member.clone());
    env
}

/// The task that drains the queue into Redis.
pub struct Publisher {
    pub redis: Redis,
    pub queue: Arc<EventQueue>,
    pub metrics: Arc<Metrics>,
}

impl Publisher {
    /// Publishes until `shutdown`, then tries for up to `flush` to publish
    /// what is still queued.
    pub async fn run(self, mut shutdown: Shutdown, flush: Duration) {
        let mut backoff = Duration::from_millis(50);
        loop {
            if self.queue.is_empty() {
                tokio::select! {
                    _ = self.queue.notify.notified() => {}
                    _ = shutdown.wait() => break,
                }
            }
            if shutdown.is_set() {
                break;
            }
            let batch = self.queue.take_batch();
            if batch.is_empty() {
                continue;
            }
            if self.publish(batch).await {
                backoff = Duration::from_millis(50);
            } else {
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.wait() => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
        let deadline = tokio::time::Instant::now() + flush;
        while !self.queue.is_empty() && tokio::time::Instant::now() < deadline {
            let batch = self.queue.take_batch();
            if !self.publish(batch).await {
                break;
            }
        }
        if !self.queue.is_empty() {
            tracing::warn!(
                left = self.queue.len(),
                "presence events not published before exit"
            );
        }
    }

    /// Publishes one batch in a pipeline; puts back what failed (from the
    /// first failure on, to keep the order). True when all went out.
    async fn publish(&self, batch: Vec<Stamped>) -> bool {
        let pipeline = self.redis.client.pipeline();
        let mut queued = 0;
        for stamped in &batch {
            let bytes = match envelope(&stamped.event, stamped.ts).encode() {
                Ok(bytes) => Bytes::from(bytes),
                Err(e) => {
                    tracing::error!(error = %e, "cannot encode a presence event; dropped");
                    continue;
                }
            };
            let channel = names::room_channel(&stamped.event.room);
            let result: Result<(), _> = if self.redis.sharded {
                pipeline.spublish(channel, bytes).await
            } else {
                pipeline.publish(channel, bytes).await
            };
            if let Err(e) = result {
                tracing::error!(error = %e, "cannot queue a publish");
            }
            queued += 1;
        }
        if queued == 0 {
            return true;
        }
        let results: Vec<Result<Value, _>> = pipeline.try_all().await;
        let failed = results.iter().position(|r| r.is_err());
        let published = failed.unwrap_or(results.len());
        self.metrics.events_published.add(published as u64);
        match failed {
            None if results.len() == batch.len() => true,
            None => {
                // Fewer answers than commands: treat the rest as not sent.
                self.metrics.redis_errors.inc();
                self.queue
                    .requeue(batch.into_iter().skip(published).collect());
                false
            }
            Some(i) => {
                if let Some(Err(e)) = results.get(i) {
                    tracing::warn!(error = %e, connected = self.redis.client.is_connected(), "publishing presence events failed; will retry");
                }
                self.metrics.redis_errors.inc();
                self.queue.requeue(batch.into_iter().skip(i).collect());
                false
            }
        }
    }
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use roomcast_protocol::Member;

    fn event(room: &str) -> Event {
        Event {
            kind: EventKind::Leave,
            room: room.into(),
            member: Member {
                user: "u".into(),
                session: "s".into(),
                info: None,
            },
        }
    }

    #[test]
    fn a_full_queue_drops_the_oldest_and_counts_them() {
        let metrics = Arc::new(Metrics::default());
        let queue = EventQueue::new(3, metrics.clone());
        queue.push_all((0..5).map(|i| event(&format!("r{i}"))).collect());
        assert_eq!(metrics.events_dropped.get(), 2);
        let rooms: Vec<String> = queue
            .take_batch()
            .into_iter()
            .map(|s| s.event.room)
            .collect();
        assert_eq!(rooms, ["r2", "r3", "r4"]);
    }

    #[test]
    fn the_envelope_decodes_as_a_presence_event() {
        let env = envelope(&event("lobby"), 7);
        let back = Envelope::decode(&env.encode().unwrap()).unwrap();
        assert_eq!(back.kind, Kind::PresenceLeave);
        assert_eq!(back.room, "lobby");
        assert_eq!(back.node, "presence");
        assert_eq!(back.offset, 0);
        assert_eq!(back.ts, 7);
        assert_eq!(back.member.unwrap().session, "s");
    }
}

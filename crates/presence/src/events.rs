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
//! The other events of the state (rooms occupied and vacated, sessions
//! ended) are for the webhooks only: they are not queued here.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
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
use crate::state::Event;

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
    /// Events taken by the publisher and not yet confirmed or put back.
    in_flight: AtomicUsize,
    metrics: Arc<Metrics>,
}

impl EventQueue {
    pub fn new(capacity: usize, metrics: Arc<Metrics>) -> EventQueue {
        EventQueue {
            queue: Mutex::new(VecDeque::new()),
            notify: Notify::new(),
            capacity,
            in_flight: AtomicUsize::new(0),
            metrics,
        }
    }

    /// Queues the presence joins and leaves among `events`, in order,
    /// stamped with the current time. Never waits on Redis. Call it while
    /// holding the state lock, so events of concurrent requests queue in the
    /// order the state produced them.
    pub fn push_all(&self, events: Vec<Event>) {
        let mut events = events
            .into_iter()
            .filter(|e| matches!(e, Event::Join { .. } | Event::Leave { .. }))
            .peekable();
        if events.peek().is_none() {
            return;
        }
        let ts = now_micros();
        let mut queue = self.queue.lock();
        queue.extend(events.map(|event| Stamped { event, ts }));
        let dropped = queue.len().saturating_sub(self.capacity);
        if dropped > 0 {
            queue.drain(..dropped);
            self.metrics.events_dropped.add(dropped as u64);
        }
        drop(queue);
        self.notify.notify_one();
    }

    /// Events not published yet: queued, or being published.
    pub fn len(&self) -> usize {
        self.queue.lock().len() + self.in_flight.load(Ordering::Relaxed)
    }

    /// True when nothing is queued (events may still be in flight).
    pub fn is_empty(&self) -> bool {
        self.queue.lock().is_empty()
    }

    fn take_batch(&self) -> Vec<Stamped> {
        let mut queue = self.queue.lock();
        let n = queue.len().min(BATCH);
        self.in_flight.store(n, Ordering::Relaxed);
        queue.drain(..n).collect()
    }

    /// The batch in flight was published.
    fn done(&self) {
        self.in_flight.store(0, Ordering::Relaxed);
    }

    /// Puts back, at the front and in order, events that were not published
    /// (the rest of the batch in flight was).
    fn requeue(&self, events: Vec<Stamped>) {
        let mut queue = self.queue.lock();
        self.in_flight.store(0, Ordering::Relaxed);
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

/// The envelope announcing a presence join or leave; `None` for the other
/// events (they are not published on room channels).
pub fn envelope(event: &Event, ts: u64) -> Option<Envelope> {
    let (kind, room, member) = match event {
        Event::Join { room, member } => (Kind::PresenceJoin, room, member),
        Event::Leave { room, member } => (Kind::PresenceLeave, room, member),
        _ => return None,
    };
    let mut env = Envelope::new(kind, room, NODE, ts);
    env.member = Some(member.clone());
    Some(env)
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
        // Encoding our own envelope cannot fail; if it ever does, the event
        // is dropped here rather than retried forever.
        let batch: Vec<(Stamped, String, Bytes)> = batch
            .into_iter()
            .filter_map(|stamped| {
                let envelope = envelope(&stamped.event, stamped.ts)?;
                match envelope.encode() {
                    Ok(bytes) => Some((stamped, envelope.room, Bytes::from(bytes))),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot encode a presence event; dropped");
                        None
                    }
                }
            })
            .collect();
        if batch.is_empty() {
            self.queue.done();
            return true;
        }
        let pipeline = self.redis.client.pipeline();
        for (_, room, bytes) in &batch {
            let channel = names::room_channel(room);
            // Queuing into a pipeline only buffers; errors come from try_all.
            let _: Result<(), _> = if self.redis.sharded {
                pipeline.spublish(channel, bytes.clone()).await
            } else {
                pipeline.publish(channel, bytes.clone()).await
            };
        }
        let results: Vec<Result<Value, _>> = pipeline.try_all().await;
        let first_failure = results
            .iter()
            .position(|r| r.is_err())
            .or((results.len() < batch.len()).then_some(results.len()));
        let Some(failed) = first_failure else {
            self.metrics.events_published.add(batch.len() as u64);
            self.queue.done();
            return true;
        };
        self.metrics.events_published.add(failed as u64);
        self.metrics.redis_errors.inc();
        if let Some(Err(e)) = results.get(failed) {
            tracing::warn!(
                error = %e,
                connected = self.redis.client.is_connected(),
                "publishing presence events failed; will retry"
            );
        }
        self.queue.requeue(
            batch
                .into_iter()
                .skip(failed)
                .map(|(stamped, _, _)| stamped)
                .collect(),
        );
        false
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
        Event::Leave {
            room: room.into(),
            member: Member {
                user: "u".into(),
                session: "s".into(),
                info: None,
            },
        }
    }

    fn room(stamped: Stamped) -> String {
        match stamped.event {
            Event::Join { room, .. } | Event::Leave { room, .. } => room,
            other => panic!("not a presence event: {other:?}"),
        }
    }

    #[test]
    fn a_full_queue_drops_the_oldest_and_counts_them() {
        let metrics = Arc::new(Metrics::default());
        let queue = EventQueue::new(3, metrics.clone());
        queue.push_all((0..5).map(|i| event(&format!("r{i}"))).collect());
        assert_eq!(metrics.events_dropped.get(), 2);
        let rooms: Vec<String> = queue.take_batch().into_iter().map(room).collect();
        assert_eq!(rooms, ["r2", "r3", "r4"]);
    }

    #[test]
    fn only_joins_and_leaves_are_queued_for_redis() {
        let metrics = Arc::new(Metrics::default());
        let queue = EventQueue::new(10, metrics);
        let member = Member {
            user: "u".into(),
            session: "s".into(),
            info: None,
        };
        queue.push_all(vec![
            Event::Occupied { room: "r".into() },
            Event::Join {
                room: "r".into(),
                member: member.clone(),
            },
            event("r"),
            Event::Vacated { room: "r".into() },
            Event::SessionEnd {
                member,
                reason: crate::state::EndReason::Closed,
            },
        ]);
        assert_eq!(queue.len(), 2);
        let kinds: Vec<Kind> = queue
            .take_batch()
            .iter()
            .map(|s| envelope(&s.event, 0).unwrap().kind)
            .collect();
        assert_eq!(kinds, [Kind::PresenceJoin, Kind::PresenceLeave]);
        assert!(envelope(&Event::Vacated { room: "r".into() }, 0).is_none());
        queue.push_all(vec![Event::Occupied { room: "x".into() }]);
        assert!(queue.is_empty());
    }

    #[test]
    fn the_envelope_decodes_as_a_presence_event() {
        let env = envelope(&event("lobby"), 7).unwrap();
        let back = Envelope::decode(&env.encode().unwrap()).unwrap();
        assert_eq!(back.kind, Kind::PresenceLeave);
        assert_eq!(back.room, "lobby");
        assert_eq!(back.node, "presence");
        assert_eq!(back.offset, 0);
        assert_eq!(back.ts, 7);
        assert_eq!(back.member.unwrap().session, "s");
    }
}

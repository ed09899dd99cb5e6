//! [`Webhooks`]: the bounded queue and the one task that sends it in
//! batches, in order, each signed and retried until accepted.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::config::WebhookConfig;
use super::event::{BatchRef, EventType, WebhookEvent};
use super::stats::WebhookStats;
use crate::http::Backend;
use crate::sign;

/// The webhook sender: a queue and the task that delivers it. Cloning
/// shares both; the task stops when the last clone is dropped (or at
/// [`Webhooks::shutdown`]).
#[derive(Clone)]
pub struct Webhooks {
    shared: Arc<Shared>,
    task: Arc<Task>,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks")
            .field("config", &self.shared.config)
            .field("stats", &self.stats())
            .finish()
    }
}

struct Shared {
    config: WebhookConfig,
    mask: u8,
    queue: Mutex<VecDeque<Queued>>,
    /// Woken by a push and by `shutdown`.
    wake: Notify,
    /// Set by `shutdown`: send what is queued without waiting for batches to fill.
    closing: AtomicBool,
    in_flight: AtomicUsize,
    events_sent: AtomicU64,
    batches_sent: AtomicU64,
    failures: AtomicU64,
    dropped: AtomicU64,
}

struct Queued {
    at: Instant,
    event: WebhookEvent,
}

/// Aborts the sending task when the last handle goes.
struct Task(tokio::task::AbortHandle);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Webhooks {
    /// Starts the sender task (call within a Tokio runtime); `None` when
    /// `config.url` is empty. The configuration should have passed
    /// [`WebhookConfig::validate`].
    pub fn start(config: WebhookConfig, backend: Backend) -> Option<Webhooks> {
        if !config.enabled() {
            return None;
        }
        let shared = Arc::new(Shared {
            mask: config.event_mask(),
            config,
            queue: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
            closing: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            events_sent: AtomicU64::new(0),
            batches_sent: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        });
        let handle = tokio::spawn(send_forever(shared.clone(), backend));
        Some(Webhooks {
            shared,
            task: Arc::new(Task(handle.abort_handle())),
        })
    }

    /// Whether events of this type are sent (`webhooks.events`).
    pub fn wants(&self, kind: EventType) -> bool {
        self.shared.mask & kind.bit() != 0
    }

    /// Queues an event; never waits. Events of a type not in
    /// `webhooks.events` are ignored; beyond `max_queued` waiting events the
    /// oldest is dropped (and counted).
    pub fn push(&self, event: WebhookEvent) {
        if !self.wants(event.kind) {
            return;
        }
        let shared = &self.shared;
        let mut queue = shared.queue.lock();
        while queue.len() >= shared.config.max_queued {
            queue.pop_front();
            shared.dropped.fetch_add(1, Ordering::Relaxed);
        }
        queue.push_back(Queued {
            at: Instant::now(),
            event,
        });
        drop(queue);
        shared.wake.notify_one();
    }

    pub fn stats(&self) -> WebhookStats {
        let s = &self.shared;
        WebhookStats {
            events_sent: s.events_sent.load(Ordering::Relaxed),
            batches_sent: s.batches_sent.load(Ordering::Relaxed),
            failures: s.failures.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            queued: self.pending() as u64,
        }
    }

    /// Events not delivered yet: queued, or in the batch being sent.
    pub fn pending(&self) -> usize {
        self.shared.queue.lock().len() + self.shared.in_flight.load(Ordering::Relaxed)
    }

    /// Sends what is queued without waiting for batches to fill, for at most
    /// `within`, then stops the task. Returns how many events were left
    /// undelivered (they are lost).
    pub async fn shutdown(&self, within: Duration) -> usize {
        self.shared.closing.store(true, Ordering::Release);
        self.shared.wake.notify_one();
        let deadline = Instant::now() + within;
        while self.pending() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.task.0.abort();
        let left = self.pending();
        if left > 0 {
            tracing::warn!(left, "webhook events not delivered before exit");
        }
        left
    }
}

/// The sender: takes batches off the queue and delivers each until it is
/// accepted. Runs until aborted.
async fn send_forever(shared: Arc<Shared>, backend: Backend) {
    let config = &shared.config;
    let delay = Duration::from_millis(config.batch_delay_ms);
    loop {
        // Wait for a first event. (A notification that came before the
        // `notified()` is kept as a permit: none is lost.)
        let first_at = loop {
            let woken = shared.wake.notified();
            if let Some(first) = shared.queue.lock().front() {
                break first.at;
            }
            woken.await;
        };
        // Give the batch until `first_at + delay` to fill up.
        let leave_at = first_at + delay;
        loop {
            let full = shared.queue.lock().len() >= config.batch_max;
            if full || shared.closing.load(Ordering::Acquire) || Instant::now() >= leave_at {
                break;
            }
            tokio::select! {
                _ = shared.wake.notified() => {}
                _ = tokio::time::sleep_until(leave_at) => {}
            }
        }
        let batch: Vec<WebhookEvent> = {
            let mut queue = shared.queue.lock();
            let n = queue.len().min(config.batch_max);
            shared.in_flight.store(n, Ordering::Relaxed);
            queue.drain(..n).map(|q| q.event).collect()
        };
        if !batch.is_empty() {
            deliver(&shared, &backend, &batch).await;
        }
        shared.in_flight.store(0, Ordering::Relaxed);
    }
}

/// Sends one batch until the backend accepts it (2xx), with the same body
/// (so the same event ids) every time, a fresh timestamp and signature, and
/// a growing, jittered wait between attempts.
async fn deliver(shared: &Shared, backend: &Backend, batch: &[WebhookEvent]) {
    let config = &shared.config;
    let body = match serde_json::to_vec(&BatchRef { events: batch }) {
        Ok(body) => Bytes::from(body),
        Err(e) => {
            // Plain strings and numbers always serialize; never retry this.
            tracing::error!(error = %e, "cannot encode a webhook batch; dropped");
            return;
        }
    };
    let timeout = Duration::from_millis(config.timeout_ms);
    let initial = Duration::from_millis(config.retry_initial_ms);
    let max = Duration::from_millis(config.retry_max_ms);
    let mut attempt: u32 = 0;
    loop {
        let timestamp = unix_seconds();
        let signature = sign::signature(config.secret.as_bytes(), timestamp, &body);
        let headers = [
            (
                HeaderName::from_static(sign::TIMESTAMP_HEADER),
                HeaderValue::from(timestamp),
            ),
            (
                HeaderName::from_static(sign::SIGNATURE_HEADER),
                HeaderValue::from_str(&signature).expect("hex is a valid header value"),
            ),
        ];
        let failure = match backend
            .post_json(&config.url, &headers, body.clone(), timeout)
            .await
        {
            Ok(answer) if answer.status.is_success() => {
                shared
                    .events_sent
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                shared.batches_sent.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(answer) => format!("answered {}", answer.status),
            Err(e) => e.to_string(),
        };
        shared.failures.fetch_add(1, Ordering::Relaxed);
        let wait = backoff(attempt, initial, max, rand::random::<f64>());
        tracing::warn!(
            events = batch.len(),
            attempt = attempt + 1,
            retry_in_ms = wait.as_millis() as u64,
            "webhook delivery failed: {failure}; will retry"
        );
        attempt = attempt.saturating_add(1);
        tokio::time::sleep(wait).await;
    }
}

/// The wait before retry `attempt` (0: the first): `initial · 2^attempt`,
/// at most `max`, of which between half and all is taken (`jitter` in
/// [0, 1)), so that senders that failed together do not retry together.
pub fn backoff(attempt: u32, initial: Duration, max: Duration, jitter: f64) -> Duration {
    let exponential = initial.saturating_mul(1u32 << attempt.min(31)).min(max);
    exponential.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

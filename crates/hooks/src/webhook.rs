//! Webhooks: events told to the backend after they happened, in signed,
//! batched POSTs (the contract is the "Webhooks" section of
//! `docs/hooks.md`).
//!
//! [`Webhooks::push`] never waits: it appends to a bounded in-memory queue
//! (beyond `max_queued` the oldest event is dropped and counted). One task
//! sends the queue in order, one batch at a time: a batch holds up to
//! `batch_max` events and leaves at most `batch_delay_ms` after its first
//! event was queued. A batch the backend does not accept (any answer but
//! 2xx, or none within `timeout_ms`) is sent again, the same events with the
//! same ids, after an exponential backoff with jitter, until it is accepted;
//! the next batch waits for it, so the backend sees events in the order they
//! were pushed.
//!
//! ```no_run
//! # async fn demo(config: roomcast_hooks::webhook::WebhookConfig) {
//! use roomcast_hooks::http::Backend;
//! use roomcast_hooks::webhook::{WebhookEvent, Webhooks};
//! if let Some(webhooks) = Webhooks::start(config, Backend::new()) {
//!     webhooks.push(WebhookEvent::room_occupied("chat:1"));
//!     webhooks.push(WebhookEvent::presence_join("chat:1", "alice", "s1"));
//!     let stats = webhooks.stats(); // for metrics
//!     webhooks.shutdown(std::time::Duration::from_secs(2)).await; // at exit
//! }
//! # }
//! ```

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use parking_lot::Mutex;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Deserializer, Serialize};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::http::Backend;
use crate::sign;

/// Longest `batch_delay_ms` accepted.
pub const MAX_BATCH_DELAY_MS: u64 = 60_000;
/// Longest `timeout_ms` accepted.
pub const MAX_TIMEOUT_MS: u64 = 600_000;
/// Longest `retry_max_ms` accepted.
pub const MAX_RETRY_MS: u64 = 3_600_000;

/// What happened: the `type` of a webhook event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    /// A session entered a room.
    PresenceJoin,
    /// A session left a room (it left, ended, or was purged).
    PresenceLeave,
    /// A room got its first member, cluster-wide.
    RoomOccupied,
    /// A room lost its last member, cluster-wide.
    RoomVacated,
    /// A session is gone for good.
    SessionEnd,
}

impl EventType {
    pub const ALL: [EventType; 5] = [
        EventType::PresenceJoin,
        EventType::PresenceLeave,
        EventType::RoomOccupied,
        EventType::RoomVacated,
        EventType::SessionEnd,
    ];

    /// The name on the wire and in `webhooks.events`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::PresenceJoin => "presence_join",
            EventType::PresenceLeave => "presence_leave",
            EventType::RoomOccupied => "room_occupied",
            EventType::RoomVacated => "room_vacated",
            EventType::SessionEnd => "session_end",
        }
    }

    pub fn parse(name: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == name)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// Why a session ended (`session_end`'s `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// Its connection ended and it was not resumed, or it was disconnected.
    Closed,
    /// It was handed off (drain) and not taken within the grace time.
    Expired,
    /// Its node's lease expired (the node crashed or was cut off).
    NodeLost,
}

/// One event of a webhook batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookEvent {
    /// Unique per event; a retried batch carries the same ids.
    pub id: String,
    #[serde(rename = "type")]
    pub kind: EventType,
    /// When it happened, in milliseconds since the Unix epoch.
    pub time_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<EndReason>,
}

impl WebhookEvent {
    /// An event of `kind` happening now, with a fresh id and no fields.
    pub fn new(kind: EventType) -> WebhookEvent {
        WebhookEvent {
            id: uuid::Uuid::new_v4().simple().to_string(),
            kind,
            time_ms: now_ms(),
            room: None,
            user: None,
            session: None,
            reason: None,
        }
    }

    pub fn presence_join(
        room: impl Into<String>,
        user: impl Into<String>,
        session: impl Into<String>,
    ) -> WebhookEvent {
        WebhookEvent {
            room: Some(room.into()),
            user: Some(user.into()),
            session: Some(session.into()),
            ..WebhookEvent::new(EventType::PresenceJoin)
        }
    }

    pub fn presence_leave(
        room: impl Into<String>,
        user: impl Into<String>,
        session: impl Into<String>,
    ) -> WebhookEvent {
        WebhookEvent {
            kind: EventType::PresenceLeave,
            ..WebhookEvent::presence_join(room, user, session)
        }
    }

    pub fn room_occupied(room: impl Into<String>) -> WebhookEvent {
        WebhookEvent {
            room: Some(room.into()),
            ..WebhookEvent::new(EventType::RoomOccupied)
        }
    }

    pub fn room_vacated(room: impl Into<String>) -> WebhookEvent {
        WebhookEvent {
            room: Some(room.into()),
            ..WebhookEvent::new(EventType::RoomVacated)
        }
    }

    pub fn session_end(
        user: impl Into<String>,
        session: impl Into<String>,
        reason: EndReason,
    ) -> WebhookEvent {
        WebhookEvent {
            user: Some(user.into()),
            session: Some(session.into()),
            reason: Some(reason),
            ..WebhookEvent::new(EventType::SessionEnd)
        }
    }
}

/// The body of one webhook request (what a backend written in Rust reads).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub events: Vec<WebhookEvent>,
}

/// The same, borrowing the events.
#[derive(Serialize)]
struct BatchRef<'a> {
    events: &'a [WebhookEvent],
}

/// The `[webhooks]` section of a configuration.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WebhookConfig {
    /// Where batches are POSTed (`http://` or `https://`). Empty: no webhooks.
    pub url: String,
    /// Key of the requests' HMAC-SHA256 signature; required with a `url`.
    pub secret: String,
    /// The event types sent (a list, or one string with commas); others are not.
    #[serde(deserialize_with = "list_or_commas")]
    pub events: Vec<String>,
    /// Most events per request.
    pub batch_max: usize,
    /// Longest a batch waits, after its first event, for more, in milliseconds.
    pub batch_delay_ms: u64,
    /// Deadline of one request, in milliseconds.
    pub timeout_ms: u64,
    /// First wait before a failed batch is sent again, in milliseconds.
    pub retry_initial_ms: u64,
    /// Longest wait between two attempts, in milliseconds.
    pub retry_max_ms: u64,
    /// Events kept while the backend does not take them; the oldest are dropped beyond.
    pub max_queued: usize,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            url: String::new(),
            secret: String::new(),
            events: EventType::ALL
                .iter()
                .map(|t| t.as_str().to_string())
                .collect(),
            batch_max: 100,
            batch_delay_ms: 100,
            timeout_ms: 5_000,
            retry_initial_ms: 200,
            retry_max_ms: 30_000,
            max_queued: 100_000,
        }
    }
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .field("events", &self.events)
            .field("batch_max", &self.batch_max)
            .field("batch_delay_ms", &self.batch_delay_ms)
            .field("timeout_ms", &self.timeout_ms)
            .field("retry_initial_ms", &self.retry_initial_ms)
            .field("retry_max_ms", &self.retry_max_ms)
            .field("max_queued", &self.max_queued)
            .finish()
    }
}

/// `["a", "b"]` or `"a,b"` (what an environment variable gives most easily).
fn list_or_commas<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrString {
        List(Vec<String>),
        String(String),
    }
    Ok(match ListOrString::deserialize(deserializer)? {
        ListOrString::List(list) => list,
        ListOrString::String(text) => text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
    })
}

impl WebhookConfig {
    /// Whether webhooks are on (a URL is set).
    pub fn enabled(&self) -> bool {
        !self.url.is_empty()
    }

    /// Checks values that have a valid type but make no sense; the error
    /// names the key, under `prefix` (`webhooks`). Never shows the secret.
    pub fn validate(&self, prefix: &str) -> Result<(), String> {
        let positive = [
            ("batch_max", self.batch_max as u64),
            ("timeout_ms", self.timeout_ms),
            ("retry_initial_ms", self.retry_initial_ms),
            ("retry_max_ms", self.retry_max_ms),
            ("max_queued", self.max_queued as u64),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(format!("{prefix}.{key} must be greater than 0"));
            }
        }
        let bounded = [
            ("batch_delay_ms", self.batch_delay_ms, MAX_BATCH_DELAY_MS),
            ("timeout_ms", self.timeout_ms, MAX_TIMEOUT_MS),
            ("retry_max_ms", self.retry_max_ms, MAX_RETRY_MS),
        ];
        for (key, value, max) in bounded {
            if value > max {
                return Err(format!("{prefix}.{key} must be at most {max}"));
            }
        }
        if self.retry_initial_ms > self.retry_max_ms {
            return Err(format!(
                "{prefix}.retry_initial_ms must not be greater than {prefix}.retry_max_ms"
            ));
        }
        for name in &self.events {
            if EventType::parse(name).is_none() {
                let known: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
                return Err(format!(
                    "{prefix}.events: unknown event type {name:?} (known: {})",
                    known.join(", ")
                ));
            }
        }
        if !self.enabled() {
            return Ok(());
        }
        if self.events.is_empty() {
            return Err(format!(
                "{prefix}.events must name at least one event type when {prefix}.url is set"
            ));
        }
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(format!("{prefix}.url must start with http:// or https://"));
        }
        let valid = self
            .url
            .parse::<http::Uri>()
            .ok()
            .is_some_and(|uri| uri.host().is_some_and(|h| !h.is_empty()));
        if !valid {
            return Err(format!("{prefix}.url is not a valid URL"));
        }
        if self.secret.is_empty() {
            return Err(format!(
                "{prefix}.secret must be set when {prefix}.url is set"
            ));
        }
        Ok(())
    }

    /// The enabled event types as a bit set.
    fn event_mask(&self) -> u8 {
        self.events
            .iter()
            .filter_map(|name| EventType::parse(name))
            .fold(0, |mask, t| mask | t.bit())
    }
}

/// Counters of a [`Webhooks`], for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WebhookStats {
    /// Events in batches the backend accepted.
    pub events_sent: u64,
    /// Batches the backend accepted.
    pub batches_sent: u64,
    /// Attempts that failed (an answer other than 2xx, no answer, a
    /// transport error); each is followed by a retry.
    pub failures: u64,
    /// Events dropped because `max_queued` were waiting.
    pub dropped: u64,
    /// Events waiting, or in the batch being sent.
    pub queued: u64,
}

impl WebhookStats {
    /// Registers the `roomcast_webhook_*` families with these values, for
    /// one scrape (help without its final period: the registry adds it).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "roomcast_webhook_events_queued",
            "Webhook events waiting to be delivered",
            ConstGauge::new(self.queued as i64),
        );
        let counters = [
            (
                "roomcast_webhook_events_sent",
                "Webhook events the backend accepted",
                self.events_sent,
            ),
            (
                "roomcast_webhook_batches_sent",
                "Webhook requests the backend accepted",
                self.batches_sent,
            ),
            (
                "roomcast_webhook_failures",
                "Webhook requests that failed (not 2xx, no answer in time, transport error); each is retried",
                self.failures,
            ),
            (
                "roomcast_webhook_events_dropped",
                "Webhook events dropped because the queue was full",
                self.dropped,
            ),
        ];
        for (name, help, value) in counters {
            registry.register(name, help, ConstCounter::new(value));
        }
    }
}

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

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(url: &str) -> WebhookConfig {
        WebhookConfig {
            url: url.into(),
            secret: "s3cret".into(),
            ..WebhookConfig::default()
        }
    }

    #[test]
    fn defaults_are_off_with_every_event_type() {
        let config = WebhookConfig::default();
        assert!(!config.enabled());
        assert_eq!(config.events.len(), 5);
        assert_eq!(config.event_mask(), 0b1_1111);
        assert_eq!(
            (config.batch_max, config.batch_delay_ms, config.timeout_ms),
            (100, 100, 5_000)
        );
        assert_eq!(
            (
                config.retry_initial_ms,
                config.retry_max_ms,
                config.max_queued
            ),
            (200, 30_000, 100_000)
        );
        config.validate("webhooks").unwrap();
        on("http://backend:9000/webhook")
            .validate("webhooks")
            .unwrap();
    }

    #[test]
    fn validation_names_the_key_at_fault() {
        let err = |config: WebhookConfig| config.validate("webhooks").unwrap_err();
        let no_secret = WebhookConfig {
            secret: String::new(),
            ..on("https://backend/webhook")
        };
        assert_eq!(
            err(no_secret),
            "webhooks.secret must be set when webhooks.url is set"
        );
        assert!(err(on("ftp://backend/webhook")).starts_with("webhooks.url must start with"));
        assert!(err(on("http://")).starts_with("webhooks.url is not a valid URL"));
        let unknown = WebhookConfig {
            events: vec!["presence_join".into(), "room_explode".into()],
            ..on("http://b/w")
        };
        let e = err(unknown);
        assert!(
            e.starts_with("webhooks.events: unknown event type \"room_explode\""),
            "{e}"
        );
        let none = WebhookConfig {
            events: vec![],
            ..on("http://b/w")
        };
        assert!(err(none).starts_with("webhooks.events must name"));
        let zero = WebhookConfig {
            batch_max: 0,
            ..on("http://b/w")
        };
        assert_eq!(err(zero), "webhooks.batch_max must be greater than 0");
        let zero = WebhookConfig {
            max_queued: 0,
            ..WebhookConfig::default()
        };
        assert_eq!(err(zero), "webhooks.max_queued must be greater than 0");
        let inverted = WebhookConfig {
            retry_initial_ms: 5_000,
            retry_max_ms: 1_000,
            ..on("http://b/w")
        };
        assert!(err(inverted).starts_with("webhooks.retry_initial_ms"));
        let huge = WebhookConfig {
            batch_delay_ms: u64::MAX,
            ..on("http://b/w")
        };
        assert!(err(huge).starts_with("webhooks.batch_delay_ms must be at most"));
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let text = format!("{:?}", on("http://b/w"));
        assert!(!text.contains("s3cret"), "{text}");
        assert!(text.contains("<redacted>"));
    }

    #[test]
    fn events_are_a_list_or_one_string_with_commas() {
        let config: WebhookConfig =
            serde_json::from_str(r#"{"events": ["room_occupied", "session_end"]}"#).unwrap();
        assert_eq!(config.events, ["room_occupied", "session_end"]);
        assert_eq!(config.batch_max, 100, "other keys keep their defaults");
        let config: WebhookConfig =
            serde_json::from_str(r#"{"events": "presence_join, presence_leave"}"#).unwrap();
        assert_eq!(config.events, ["presence_join", "presence_leave"]);
        assert_eq!(
            config.event_mask(),
            EventType::PresenceJoin.bit() | EventType::PresenceLeave.bit()
        );
    }

    #[test]
    fn events_serialize_as_the_contract_says() {
        let join = WebhookEvent::presence_join("chat:1", "alice", "s1");
        let json = serde_json::to_value(&join).unwrap();
        assert_eq!(json["type"], "presence_join");
        assert_eq!(json["room"], "chat:1");
        assert_eq!(json["user"], "alice");
        assert_eq!(json["session"], "s1");
        assert!(json.get("reason").is_none());
        assert_eq!(json["id"].as_str().unwrap().len(), 32);
        assert!(json["time_ms"].as_u64().unwrap() > 1_600_000_000_000);

        let end = WebhookEvent::session_end("alice", "s1", EndReason::NodeLost);
        let json = serde_json::to_value(&end).unwrap();
        assert_eq!(json["type"], "session_end");
        assert_eq!(json["reason"], "node_lost");
        assert!(json.get("room").is_none());

        let vacated = serde_json::to_value(WebhookEvent::room_vacated("r")).unwrap();
        let keys: Vec<&String> = vacated.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 4, "{vacated}");
        assert_eq!(
            WebhookEvent::presence_leave("r", "u", "s").kind,
            EventType::PresenceLeave
        );
        assert_eq!(
            WebhookEvent::room_occupied("r").kind,
            EventType::RoomOccupied
        );
        assert_ne!(
            WebhookEvent::room_occupied("r").id,
            WebhookEvent::room_occupied("r").id
        );
        let back: WebhookEvent =
            serde_json::from_value(serde_json::to_value(&end).unwrap()).unwrap();
        assert_eq!(back, end);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_between_half_and_all() {
        let initial = Duration::from_millis(200);
        let max = Duration::from_secs(30);
        let top = |attempt| backoff(attempt, initial, max, 0.999_999);
        let bottom = |attempt| backoff(attempt, initial, max, 0.0);
        assert_eq!(bottom(0), Duration::from_millis(100));
        assert!(top(0) <= initial && top(0) > Duration::from_millis(199));
        assert_eq!(bottom(1), Duration::from_millis(200));
        assert_eq!(bottom(3), Duration::from_millis(800));
        assert_eq!(bottom(20), Duration::from_secs(15));
        assert!(top(20) <= max);
        assert!(top(u32::MAX) <= max, "no overflow");
        for attempt in 0..40 {
            assert!(bottom(attempt) <= bottom(attempt + 1));
        }
    }
}

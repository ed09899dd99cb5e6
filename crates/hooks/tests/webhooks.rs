//! `Webhooks` against a real HTTP server on a loopback port: batching,
//! signatures, order, retries of the same batch, timeouts, the queue bound,
//! the event filter and the flush at shutdown.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use parking_lot::Mutex;
use roomcast_hooks::http::Backend;
use roomcast_hooks::sign;
use roomcast_hooks::webhook::{Batch, EndReason, WebhookConfig, WebhookEvent, Webhooks};

const SECRET: &str = "hook-test-secret";

/// What the test backend saw.
#[derive(Default)]
struct Seen {
    /// Accepted batches, in arrival order.
    accepted: Mutex<Vec<Batch>>,
    /// Batches answered 500 on purpose.
    refused: Mutex<Vec<Batch>>,
    bad_signatures: AtomicUsize,
    /// The next this many requests answer 500.
    fail_next: AtomicUsize,
    /// The next this many requests answer after 500 ms (and are not recorded).
    slow_next: AtomicUsize,
}

impl Seen {
    fn accepted_ids(&self) -> Vec<String> {
        self.accepted
            .lock()
            .iter()
            .flat_map(|b| b.events.iter().map(|e| e.id.clone()))
            .collect()
    }
}

async fn receive(State(seen): State<Arc<Seen>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let timestamp: u64 = header(sign::TIMESTAMP_HEADER).parse().unwrap_or(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let signature = header(sign::SIGNATURE_HEADER);
    if !sign::verify(SECRET.as_bytes(), timestamp, &body, &signature, now, 300) {
        seen.bad_signatures.fetch_add(1, Ordering::SeqCst);
        return StatusCode::UNAUTHORIZED;
    }
    if header("content-type") != "application/json" {
        return StatusCode::UNSUPPORTED_MEDIA_TYPE;
    }
    let batch: Batch = serde_json::from_slice(&body).expect("a batch");
    let take = |counter: &AtomicUsize| {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    };
    if take(&seen.slow_next) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        return StatusCode::OK;
    }
    if take(&seen.fail_next) {
        seen.refused.lock().push(batch);
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    seen.accepted.lock().push(batch);
    StatusCode::NO_CONTENT
}

/// A backend on a free port; its webhook URL.
async fn backend(seen: Arc<Seen>) -> String {
    let app = Router::new().route("/hook", post(receive)).with_state(seen);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/hook")
}

fn config(url: &str) -> WebhookConfig {
    WebhookConfig {
        url: url.into(),
        secret: SECRET.into(),
        batch_delay_ms: 100,
        retry_initial_ms: 10,
        retry_max_ms: 50,
        ..WebhookConfig::default()
    }
}

async fn start(config: WebhookConfig) -> Webhooks {
    config.validate("webhooks").expect("valid config");
    Webhooks::start(config, Backend::new()).expect("a url is set")
}

fn joins(n: usize) -> Vec<WebhookEvent> {
    (0..n)
        .map(|i| WebhookEvent::presence_join("room", format!("u{i}"), format!("s{i}")))
        .collect()
}

/// Waits up to 5 s for `done`.
async fn eventually(mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "not done within 5 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn no_url_no_webhooks() {
    assert!(Webhooks::start(WebhookConfig::default(), Backend::new()).is_none());
}

#[tokio::test]
async fn events_pushed_together_leave_in_one_signed_batch() {
    let seen = Arc::new(Seen::default());
    let webhooks = start(config(&backend(seen.clone()).await)).await;
    let events = joins(5);
    let started = Instant::now();
    for event in &events {
        webhooks.push(event.clone());
    }
    eventually(|| webhooks.stats().batches_sent == 1).await;
    assert!(
        started.elapsed() >= Duration::from_millis(90),
        "the batch waited for more"
    );
    let accepted = seen.accepted.lock().clone();
    assert_eq!(accepted, [Batch { events }]);
    assert_eq!(seen.bad_signatures.load(Ordering::SeqCst), 0);
    let stats = webhooks.stats();
    assert_eq!(
        (
            stats.events_sent,
            stats.batches_sent,
            stats.failures,
            stats.queued
        ),
        (5, 1, 0, 0)
    );
}

#[tokio::test]
async fn batches_hold_at_most_batch_max_events_and_keep_the_order() {
    let seen = Arc::new(Seen::default());
    let webhooks = start(WebhookConfig {
        batch_max: 2,
        ..config(&backend(seen.clone()).await)
    })
    .await;
    let events = joins(5);
    for event in &events {
        webhooks.push(event.clone());
    }
    eventually(|| webhooks.stats().events_sent == 5).await;
    let sizes: Vec<usize> = seen
        .accepted
        .lock()
        .iter()
        .map(|b| b.events.len())
        .collect();
    assert_eq!(sizes, [2, 2, 1]);
    let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    assert_eq!(seen.accepted_ids(), ids);
}

#[tokio::test]
async fn a_refused_batch_is_sent_again_with_the_same_ids_until_accepted_and_nothing_overtakes_it() {
    let seen = Arc::new(Seen::default());
    seen.fail_next.store(3, Ordering::SeqCst);
    let webhooks = start(config(&backend(seen.clone()).await)).await;
    let first = joins(3);
    for event in &first {
        webhooks.push(event.clone());
    }
    // Pushed while the first batch is being retried: they go after it.
    eventually(|| webhooks.stats().failures >= 1).await;
    let later = vec![
        WebhookEvent::room_vacated("room"),
        WebhookEvent::session_end("u0", "s0", EndReason::Closed),
    ];
    for event in &later {
        webhooks.push(event.clone());
    }
    eventually(|| webhooks.stats().events_sent == 5).await;
    let refused = seen.refused.lock().clone();
    assert_eq!(refused.len(), 3);
    for batch in &refused {
        assert_eq!(batch.events, first, "a retry carries the same events");
    }
    let all: Vec<String> = first.iter().chain(&later).map(|e| e.id.clone()).collect();
    assert_eq!(seen.accepted_ids(), all, "exactly once, in order");
    let stats = webhooks.stats();
    assert_eq!(
        (stats.failures, stats.batches_sent, stats.dropped),
        (3, 2, 0)
    );
}

#[tokio::test]
async fn no_answer_within_the_timeout_is_a_failure_and_is_retried() {
    let seen = Arc::new(Seen::default());
    seen.slow_next.store(1, Ordering::SeqCst);
    let webhooks = start(WebhookConfig {
        timeout_ms: 100,
        ..config(&backend(seen.clone()).await)
    })
    .await;
    let events = joins(2);
    for event in &events {
        webhooks.push(event.clone());
    }
    eventually(|| webhooks.stats().events_sent == 2).await;
    assert_eq!(webhooks.stats().failures, 1);
    assert_eq!(seen.accepted.lock().clone(), [Batch { events }]);
}

#[tokio::test]
async fn an_unreachable_backend_is_retried_with_a_growing_wait() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let webhooks = start(WebhookConfig {
        batch_delay_ms: 0,
        retry_initial_ms: 50,
        retry_max_ms: 400,
        ..config(&format!("http://127.0.0.1:{port}/hook"))
    })
    .await;
    webhooks.push(WebhookEvent::room_occupied("r"));
    tokio::time::sleep(Duration::from_millis(700)).await;
    // Waits of at least 25, 50, 100, 200 ms: at most about 5 attempts.
    let failures = webhooks.stats().failures;
    assert!((2..=6).contains(&failures), "{failures} attempts");
    assert_eq!(webhooks.stats().queued, 1);
    assert_eq!(webhooks.shutdown(Duration::from_millis(50)).await, 1);
}

#[tokio::test]
async fn beyond_max_queued_the_oldest_are_dropped_and_shutdown_flushes_the_rest() {
    let seen = Arc::new(Seen::default());
    let webhooks = start(WebhookConfig {
        max_queued: 3,
        batch_delay_ms: 60_000,
        ..config(&backend(seen.clone()).await)
    })
    .await;
    let events = joins(5);
    for event in &events {
        webhooks.push(event.clone());
    }
    let stats = webhooks.stats();
    assert_eq!((stats.dropped, stats.queued), (2, 3));
    // The batch would wait a minute; shutdown sends it now.
    let started = Instant::now();
    assert_eq!(webhooks.shutdown(Duration::from_secs(5)).await, 0);
    assert!(started.elapsed() < Duration::from_secs(2));
    let kept: Vec<String> = events[2..].iter().map(|e| e.id.clone()).collect();
    assert_eq!(seen.accepted_ids(), kept);
}

#[tokio::test]
async fn only_the_configured_event_types_are_sent() {
    let seen = Arc::new(Seen::default());
    let webhooks = start(WebhookConfig {
        events: vec!["session_end".into(), "room_vacated".into()],
        batch_delay_ms: 0,
        ..config(&backend(seen.clone()).await)
    })
    .await;
    let end = WebhookEvent::session_end("u", "s", EndReason::Expired);
    webhooks.push(WebhookEvent::room_occupied("r"));
    webhooks.push(WebhookEvent::presence_join("r", "u", "s"));
    webhooks.push(WebhookEvent::presence_leave("r", "u", "s"));
    webhooks.push(end.clone());
    eventually(|| webhooks.stats().events_sent == 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(seen.accepted_ids(), [end.id]);
    assert_eq!(webhooks.stats().queued, 0);
}

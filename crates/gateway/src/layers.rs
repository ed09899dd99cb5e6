//! The HTTP API's cross-cutting layers, each a tower layer (axum's
//! `from_fn` middleware) that `api::router` composes in one place: a span
//! per request, and the API key check with its per-address failure budget.
//! Handlers behind them never see an unauthenticated request.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use roomcast_protocol::ErrorCode;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tracing::Instrument;

use crate::config::{ApiConfig, Secret};
use crate::error::NodeError;
use crate::front::Peer;
use crate::metrics::Metrics;

/// A span per API request, child of the caller's `traceparent` if it sent one.
pub async fn trace_request(request: Request, next: Next) -> Response {
    if !crate::telemetry::enabled() {
        return next.run(request).await;
    }
    let span = tracing::info_span!(
        "api",
        method = %request.method(),
        path = %request.uri().path(),
        status = tracing::field::Empty
    );
    if let Some(parent) = request
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
    {
        crate::telemetry::set_remote_parent(&span, parent);
    }
    let response = next.run(request).instrument(span.clone()).await;
    span.record("status", response.status().as_u16());
    response
}

/// What the API key check needs: the key, the failure budget, the counters.
pub struct ApiKey {
    key: Secret,
    max_failures: u32,
    failures: KeyFailures,
    metrics: Arc<Metrics>,
}

impl ApiKey {
    pub fn new(config: &ApiConfig, metrics: Arc<Metrics>) -> ApiKey {
        ApiKey {
            key: config.key.clone(),
            max_failures: config.max_key_failures_per_minute,
            failures: KeyFailures::default(),
            metrics,
        }
    }
}

/// Lets a request through only with `Authorization: Bearer <api.key>`. The
/// key is compared in constant time (both sides hashed first, so not even
/// the length leaks); an address that used up its failures gets 429 until
/// its window ends.
pub async fn require_api_key(
    State(guard): State<Arc<ApiKey>>,
    request: Request,
    next: Next,
) -> Response {
    guard.metrics.api_requests.inc();
    let ip = peer_ip(&request);
    if !guard.failures.check(ip, false, guard.max_failures) {
        guard.metrics.api_unauthorized.inc();
        return NodeError::new(
            ErrorCode::RateLimited,
            "too many requests with a wrong API key; try again later",
        )
        .into_response();
    }
    let expected = guard.key.expose();
    let given = roomcast_service::bearer::bearer_token(request.headers());
    if expected.is_empty() || !keys_match(given, expected) {
        guard.metrics.api_unauthorized.inc();
        guard.failures.check(ip, true, guard.max_failures);
        let message = if expected.is_empty() {
            "the API is disabled: no api.key is configured"
        } else {
            "missing or wrong API key"
        };
        return NodeError::new(ErrorCode::Unauthorized, message).into_response();
    }
    next.run(request).await
}

/// Whether `given` is `expected`, compared in constant time: both sides
/// are hashed first, so not even the length leaks.
pub fn keys_match(given: &str, expected: &str) -> bool {
    Sha256::digest(given.as_bytes())
        .ct_eq(&Sha256::digest(expected.as_bytes()))
        .into()
}

/// The address a request came from (unspecified when unknown).
pub fn peer_ip(request: &Request) -> IpAddr {
    request
        .extensions()
        .get::<ConnectInfo<Peer>>()
        .map(|c| c.0.addr.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

/// Failed key checks per address, in one-minute windows (the API key's,
/// and the admin page's logins).
#[derive(Default)]
pub struct KeyFailures {
    windows: parking_lot::Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

const FAILURE_WINDOW: Duration = Duration::from_secs(60);

impl KeyFailures {
    /// True when `ip` may try again; counts a failure when `failed`.
    pub fn check(&self, ip: IpAddr, failed: bool, max: u32) -> bool {
        let now = Instant::now();
        let mut windows = self.windows.lock();
        if windows.len() > 10_000 {
            windows.retain(|_, (start, _)| now.duration_since(*start) < FAILURE_WINDOW);
        }
        let entry = windows.entry(ip).or_insert((now, 0));
        if now.duration_since(entry.0) >= FAILURE_WINDOW {
            *entry = (now, 0);
        }
        if entry.1 >= max {
            return false;
        }
        if failed {
            entry.1 += 1;
        }
        true
    }
}

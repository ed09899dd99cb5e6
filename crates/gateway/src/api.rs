//! The application API under `/api`, for backends: publish, send, presence,
//! disconnect, stats. Every call needs `Authorization: Bearer <api.key>`;
//! the key is compared in constant time (both sides hashed first, so not
//! even the length leaks). Failures answer `{"error": code, "message": …}`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use roomcast_protocol::{Data, ErrorCode, Target};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tracing::Instrument;

use crate::error::NodeError;
use crate::node::Node;

pub fn router(node: Arc<Node>) -> Router<Arc<Node>> {
    let limit = node.config.limits.max_message_bytes;
    Router::new()
        .route("/publish", post(publish))
        .route("/send", post(send))
        .route("/presence/{room}", get(presence))
        .route("/disconnect", post(disconnect))
        .route("/stats", get(stats))
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(node, require_key))
        .layer(middleware::from_fn(trace_request))
}

impl IntoResponse for NodeError {
    fn into_response(self) -> Response {
        (
            self.status(),
            Json(json!({"error": self.code, "message": self.message})),
        )
            .into_response()
    }
}

/// A span per API request, child of the caller's `traceparent` if it sent one.
async fn trace_request(request: Request, next: Next) -> Response {
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

/// Failed key checks per address, in one-minute windows: a client guessing
/// keys gets 429 once it used up its failures, until the window ends.
#[derive(Default)]
pub struct KeyFailures {
    windows:
        parking_lot::Mutex<std::collections::HashMap<std::net::IpAddr, (std::time::Instant, u32)>>,
}

const FAILURE_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

impl KeyFailures {
    /// True when `ip` may try again; counts a failure when `failed`.
    fn check(&self, ip: std::net::IpAddr, failed: bool, max: u32) -> bool {
        let now = std::time::Instant::now();
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

async fn require_key(State(node): State<Arc<Node>>, request: Request, next: Next) -> Response {
    node.metrics.api_requests.inc();
    let ip = request
        .extensions()
        .get::<axum::extract::ConnectInfo<crate::server::Peer>>()
        .map(|c| c.0.addr.ip())
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    let max = node.config.api.max_key_failures_per_minute;
    if !node.api_failures.check(ip, false, max) {
        node.metrics.api_unauthorized.inc();
        return NodeError::new(
            ErrorCode::RateLimited,
            "too many requests with a wrong API key; try again later",
        )
        .into_response();
    }
    let expected = node.config.api.key.expose();
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let matches: bool = Sha256::digest(given.as_bytes())
        .ct_eq(&Sha256::digest(expected.as_bytes()))
        .into();
    if expected.is_empty() || !matches {
        node.metrics.api_unauthorized.inc();
        node.api_failures.check(ip, true, max);
        let message = if expected.is_empty() {
            "the API is disabled: no api.key is configured"
        } else {
            "missing or wrong API key"
        };
        return NodeError::new(ErrorCode::Unauthorized, message).into_response();
    }
    next.run(request).await
}

/// Parses a JSON body, answering our own error shape for every failure.
fn parse<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, NodeError> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            NodeError::new(
                ErrorCode::TooLarge,
                "body is larger than limits.max_message_bytes",
            )
        } else {
            NodeError::bad_request(e.body_text())
        }
    })?;
    serde_json::from_slice(&body).map_err(|e| NodeError::bad_request(format!("bad JSON body: {e}")))
}

#[derive(Deserialize)]
struct PublishBody {
    room: String,
    data: Data,
}

async fn publish(
    State(node): State<Arc<Node>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, NodeError> {
    let body: PublishBody = parse(body)?;
    let message = node.publish(&body.room, body.data, None).await?;
    Ok(Json(json!({"offset": message.offset, "epoch": &*message.epoch})).into_response())
}

#[derive(Deserialize)]
struct SendBody {
    to: Target,
    data: Data,
}

async fn send(
    State(node): State<Arc<Node>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, NodeError> {
    let body: SendBody = parse(body)?;
    let delivered = node.send(&body.to, body.data, None).await?;
    Ok(Json(json!({"delivered": delivered})).into_response())
}

async fn presence(
    State(node): State<Arc<Node>>,
    Path(room): Path<String>,
) -> Result<Response, NodeError> {
    let members = node.presence(&room).await?;
    Ok(Json(json!({"room": room, "members": members})).into_response())
}

async fn disconnect(
    State(node): State<Arc<Node>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, NodeError> {
    let target: Target = parse(body)?;
    let n = node.disconnect(&target).await?;
    Ok(Json(json!({"disconnected": n})).into_response())
}

async fn stats(State(node): State<Arc<Node>>) -> Response {
    let connections = node.registry.len();
    let rooms = node.room_count();
    Json(json!({
        "node": &*node.id,
        "engine": node.broker.engine(),
        "connections": connections,
        "rooms": rooms,
        "nodes": [{"node": &*node.id, "connections": connections, "rooms": rooms}],
    }))
    .into_response()
}

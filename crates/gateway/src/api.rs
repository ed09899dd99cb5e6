//! The application API under `/api`, for backends: publish, send, presence,
//! history, disconnect, stats, nodes. Every call needs `Authorization:
//! Bearer <api.key>`; the key is compared in constant time (both sides
//! hashed first, so not even the length leaks). Failures answer
//! `{"error": code, "message": …}`. The admin page serves the same
//! handlers ([`routes`]) under `/admin/api` behind its session cookie
//! instead of the key (`admin/`).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use roomcast_protocol::{Data, ErrorCode, Target};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;

use crate::error::NodeError;
use crate::layers::{require_api_key, trace_request, ApiKey};
use crate::node::Node;
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;

/// The API's routes behind its layers, composed here and only here
/// (outermost first): the request's span, `Authorization` marked sensitive
/// (never logged), the API key check, the body limit. The handlers read as
/// the happy path.
pub fn router(node: Arc<Node>) -> Router<Arc<Node>> {
    let key = Arc::new(ApiKey::new(&node.config.api, node.metrics.clone()));
    routes(&node)
        .layer(middleware::from_fn_with_state(key, require_api_key))
        .layer(SetSensitiveRequestHeadersLayer::new([
            header::AUTHORIZATION,
        ]))
        .layer(middleware::from_fn(trace_request))
}

/// The API's calls with the body limit and nothing else: whoever mounts
/// them puts its own check in front (the API key here, the admin session
/// in `admin/`).
pub fn routes(node: &Node) -> Router<Arc<Node>> {
    let limit = node.config.limits.max_message_bytes;
    Router::new()
        .route("/publish", post(publish))
        .route("/send", post(send))
        .route("/presence/{room}", get(presence))
        .route("/history/{room}", get(history))
        .route("/disconnect", post(disconnect))
        .route("/stats", get(stats))
        .route("/nodes", get(nodes))
        .layer(axum::extract::DefaultBodyLimit::max(limit))
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

/// The header that carries a publish's idempotency key.
const IDEMPOTENCY_KEY: &str = "idempotency-key";

async fn publish(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, NodeError> {
    let key = match headers.get(IDEMPOTENCY_KEY) {
        Some(value) => Some(value.to_str().map_err(|_| {
            NodeError::bad_request(
                "Idempotency-Key must be 1 to 64 characters of A-Z a-z 0-9 _ . : -",
            )
        })?),
        None => None,
    };
    let body: PublishBody = parse(body)?;
    let published = node.publish(&body.room, body.data, None, key).await?;
    let mut answer = json!({"offset": published.offset, "epoch": &*published.epoch});
    if published.duplicate {
        answer["duplicate"] = json!(true);
    }
    Ok(Json(answer).into_response())
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
    let cluster = node.nodes().await;
    let nodes: Vec<_> = cluster
        .nodes
        .iter()
        .map(|n| {
            json!({
                "node": n.record.node,
                "connections": n.record.connections,
                "rooms": n.record.rooms,
                "live": n.live,
            })
        })
        .collect();
    Json(json!({
        "node": &*node.id,
        "engine": node.broker.engine(),
        "connections": connections,
        "rooms": rooms,
        "nodes": nodes,
    }))
    .into_response()
}

/// Every node with its latest stats and their last two minutes.
async fn nodes(State(node): State<Arc<Node>>) -> Response {
    let cluster = node.nodes().await;
    let mut body = json!({"node": &*node.id, "nodes": cluster.nodes});
    if let Some(error) = cluster.error {
        body["error"] = error.into();
    }
    Json(body).into_response()
}

/// Most messages `GET /api/history/{room}` returns.
const HISTORY_MAX: usize = 100;

#[derive(Deserialize)]
struct HistoryQuery {
    limit: Option<usize>,
}

/// The room's latest messages still in history, oldest first.
async fn history(
    State(node): State<Arc<Node>>,
    Path(room): Path<String>,
    query: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, NodeError> {
    let Query(query) = query.map_err(|e| NodeError::bad_request(e.body_text()))?;
    let limit = query.limit.unwrap_or(20).clamp(1, HISTORY_MAX);
    let Some(recent) = node.recent(&room, limit).await? else {
        return Ok(
            Json(json!({"room": room, "epoch": null, "offset": 0, "messages": []})).into_response(),
        );
    };
    let messages: Vec<_> = recent
        .messages
        .iter()
        .map(|m| {
            json!({
                "offset": m.offset,
                "epoch": &*m.epoch,
                "data": m.data,
                "from": m.from,
                "published_at_ms": m.published_at_us / 1000,
            })
        })
        .collect();
    Ok(Json(json!({
        "room": room,
        "epoch": &*recent.position.epoch,
        "offset": recent.position.offset,
        "messages": messages,
    }))
    .into_response())
}

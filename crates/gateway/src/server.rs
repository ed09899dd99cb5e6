//! The HTTP server of a node: the WebSocket upgrade at `/ws`, the operations
//! endpoints (`/healthz`, `/readyz`, `/metrics`) and the application API
//! under `/api`. Cross-cutting checks (draining, origin, capacity) happen
//! here, before a connection task exists.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use roomcast_protocol::{close, Codec};
use roomcast_service::metrics::Snapshot;
use yawc::IncomingUpgrade;

use crate::connection::{self, Upgrade};
use crate::front::Peer;
use crate::limits::OpenSocket;
use crate::metrics::{self, Rejection};
use crate::node::Node;

pub fn router(node: Arc<Node>) -> Router {
    let mut sockets = Router::new().route("/ws", get(upgrade));
    let echo = &node.config.websocket.echo_path;
    if !echo.is_empty() {
        tracing::warn!(
            path = %echo,
            "websocket.echo_path is set: {echo} echoes every message back to anyone; \
             for conformance tests only, never in production"
        );
        sockets = sockets.route(echo, get(echo_upgrade));
    }
    let sockets = sockets.route_layer(axum::middleware::map_request(
        crate::websocket::first_deflate_offer,
    ));
    Router::new()
        .merge(sockets)
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .route("/", get(index))
        .nest("/api", crate::api::router(node.clone()))
        .merge(crate::demo::router())
        .merge(crate::admin::router(&node))
        .with_state(node)
}

async fn index(State(node): State<Arc<Node>>) -> String {
    format!(
        "roomcast gateway {}\nWebSocket: /ws (subprotocols roomcast.v1.json, roomcast.v1.msgpack)\nAPI: /api/publish /api/send /api/presence/{{room}} /api/disconnect /api/stats\nOps: /healthz /readyz /metrics\nDemo chat: /demo/\n",
        node.id
    )
}

async fn ready(State(node): State<Arc<Node>>) -> Response {
    if node.drain.is_draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response();
    }
    if let Some(redis) = &node.redis {
        // A node whose pub/sub is down would accept members it cannot
        // deliver to: not ready until every wanted channel is held again.
        let health = redis.pubsub_health();
        if !health.connected {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "redis pub/sub not connected\n",
            )
                .into_response();
        }
        if !health.is_healthy() {
            let text = format!(
                "redis pub/sub: {} room subscriptions missing{}\n",
                health.rooms_unsubscribed,
                if health.node_channels_unsubscribed {
                    ", node channels missing"
                } else {
                    ""
                }
            );
            return (StatusCode::SERVICE_UNAVAILABLE, text).into_response();
        }
    }
    (StatusCode::OK, "ready\n").into_response()
}

async fn metrics(State(node): State<Arc<Node>>) -> Response {
    let mut scrape = Snapshot::default();
    if let Some(webhooks) = &node.webhooks {
        webhooks.stats().register(scrape.registry());
    }
    let tasks = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    scrape.gauge(
        "roomcast_tasks",
        "Tasks alive in the node's runtime",
        tasks as i64,
    );
    scrape.counters(
        "roomcast_heartbeat_pings",
        "WebSocket pings sent to silent connections, by path: written by the heartbeat itself (direct) or queued to the connection's task",
        "path",
        &[
            ("direct", node.registry.pings_direct.get()),
            ("queued", node.registry.pings_queued.get()),
        ],
    );
    scrape.counter(
        "roomcast_token_expiries",
        "Connections closed (4401) because their token expired without a refresh",
        node.registry.expired.get(),
    );
    if let Some(redis) = &node.redis {
        redis_families(&mut scrape, &redis.stats);
        pubsub_health(&mut scrape, redis.pubsub_health(), &redis.stats);
    }
    if let Some(status) = node.presence.status() {
        scrape.gauge(
            "roomcast_presence_queue_depth",
            "Presence updates waiting to reach the presence service",
            status.queued as i64,
        );
        scrape.gauge(
            "roomcast_presence_reachable",
            "1 while the last sync with the presence service succeeded",
            i64::from(status.connected),
        );
        scrape.counter(
            "roomcast_presence_queue_overflows",
            "Times the update queue overflowed and a full sync replaced it",
            status.overflows,
        );
    }
    let mut text = node.metrics.render();
    scrape.encode(&mut text);
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response()
}

/// The Redis engine's counters.
fn redis_families(scrape: &mut Snapshot, stats: &roomcast_broker::redis::RedisStats) {
    use std::sync::atomic::Ordering::Relaxed;
    let families = [
        (
            "roomcast_redis_errors",
            "Redis commands that failed",
            &stats.errors,
        ),
        (
            "roomcast_redis_reconnects",
            "Reconnections of the pub/sub connection",
            &stats.reconnects,
        ),
        (
            "roomcast_pubsub_lost",
            "Pub/sub messages dropped because the dispatcher lagged (then repaired from history)",
            &stats.pubsub_lost,
        ),
        (
            "roomcast_pubsub_gap_repaired",
            "Messages delivered from history to fill a pub/sub gap",
            &stats.gap_repaired,
        ),
        (
            "roomcast_pubsub_gap_unrepaired",
            "Messages of a pub/sub gap no longer in history (members missed them)",
            &stats.gap_unrepaired,
        ),
        (
            "roomcast_redis_history_reads",
            "read.lua calls: joins, resumes and gap repairs (concurrent reads of a room share one)",
            &stats.history_reads,
        ),
        (
            "roomcast_pubsub_duplicates_dropped",
            "Pub/sub messages dropped as already delivered",
            &stats.duplicates_dropped,
        ),
    ];
    for (name, help, value) in families {
        scrape.counter(name, help, value.load(Relaxed));
    }
}

/// Whether pub/sub holds what the node needs, and how repairs went.
fn pubsub_health(
    scrape: &mut Snapshot,
    health: roomcast_broker::redis::PubsubHealth,
    stats: &roomcast_broker::redis::RedisStats,
) {
    use std::sync::atomic::Ordering::Relaxed;
    scrape.gauge(
        "roomcast_pubsub_rooms_unsubscribed",
        "Rooms with local members whose Redis channel is not known to be subscribed (should be 0)",
        health.rooms_unsubscribed as i64,
    );
    scrape.gauge(
        "roomcast_pubsub_node_channels_unsubscribed",
        "1 while the node's own channels (direct messages, all nodes) are not known to be subscribed",
        i64::from(health.node_channels_unsubscribed),
    );
    scrape.gauge(
        "roomcast_pubsub_connected",
        "1 while the Redis pub/sub connection is up",
        i64::from(health.connected),
    );
    scrape.counter(
        "roomcast_pubsub_resubscribes",
        "Channels subscribed again after Redis lost them (reconnect, failover, slot move)",
        stats.resubscribes.load(Relaxed),
    );
    scrape.counter(
        "roomcast_pubsub_subscription_shortfalls",
        "Checks that found Redis holding fewer of the node's subscriptions than wanted",
        stats.subscription_shortfalls.load(Relaxed),
    );
    scrape.summary(
        "roomcast_pubsub_repair_seconds",
        "Time from losing subscriptions to holding every wanted channel again.",
        stats.repair_ms_total.load(Relaxed) as f64 / 1000.0,
        stats.repairs.load(Relaxed),
    );
    scrape.gauge_f64(
        "roomcast_pubsub_last_repair_seconds",
        "How long the last subscription repair took",
        stats.last_repair_ms.load(Relaxed) as f64 / 1000.0,
    );
    scrape.counter(
        "roomcast_pubsub_gap_repair_failures",
        "History reads for a gap repair that failed (retried until one succeeds)",
        stats.gap_repair_failures.load(Relaxed),
    );
}

async fn upgrade(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    version: axum::http::Version,
    headers: HeaderMap,
    incoming: IncomingUpgrade,
) -> Response {
    upgrade_as(node, peer, version, headers, incoming, false).await
}

/// The upgrade at `websocket.echo_path`: the same checks and options as
/// `/ws`, then the echo instead of the protocol ([`connection::echo`]).
async fn echo_upgrade(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    version: axum::http::Version,
    headers: HeaderMap,
    incoming: IncomingUpgrade,
) -> Response {
    upgrade_as(node, peer, version, headers, incoming, true).await
}

async fn upgrade_as(
    node: Arc<Node>,
    peer: Peer,
    version: axum::http::Version,
    headers: HeaderMap,
    incoming: IncomingUpgrade,
    echo: bool,
) -> Response {
    let remote = peer.addr;
    // The descriptor is the WebSocket's own only on an HTTP/1 connection
    // (over HTTP/2 it would carry other streams too).
    let direct = node.config.heartbeat.direct_ping || node.config.websocket.direct_writes;
    let fd = if version <= axum::http::Version::HTTP_11 && direct {
        peer.fd
    } else {
        None
    };
    if node.drain.is_draining() {
        node.metrics.reject(Rejection::Draining);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "node is draining; connect to another node\n",
        )
            .into_response();
    }
    let allowed = &node.config.websocket.allowed_origins;
    if !allowed.is_empty() {
        let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
        if !origin.is_some_and(|o| allowed.iter().any(|a| a == o)) {
            node.metrics.reject(Rejection::Origin);
            return (StatusCode::FORBIDDEN, "origin not allowed\n").into_response();
        }
    }
    let offer = headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok());
    let Some(codec) = Codec::from_offer(offer) else {
        node.metrics.reject(Rejection::BadRequest);
        return (
            StatusCode::BAD_REQUEST,
            "unsupported subprotocol; offer roomcast.v1.json or roomcast.v1.msgpack\n",
        )
            .into_response();
    };
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);

    let live = node.live.get();
    let limits = &live.config.limits;
    // Headers the connect proxy is to see, taken now (the socket keeps none).
    let forwarded: Vec<(String, String)> = live
        .proxy
        .forward_headers()
        .iter()
        .filter_map(|name| {
            let value = headers.get(name.as_str())?.to_str().ok()?;
            Some((name.to_ascii_lowercase(), value.to_string()))
        })
        .collect();
    // The address's slot was taken at accept and stays with the socket
    // ([`crate::front`]); the node-wide cap counts WebSockets from here.
    let (guard, open) = OpenSocket::count(node.open.clone());
    let refuse = if open > limits.max_connections {
        node.metrics.reject(Rejection::MaxConnections);
        Some((close::TRY_AGAIN_LATER, "node at capacity"))
    } else {
        None
    };

    let (mut response, upgraded) = match incoming.upgrade(node.ws_options.clone()) {
        Ok(pair) => pair,
        Err(e) => {
            node.metrics.reject(Rejection::BadRequest);
            return (StatusCode::BAD_REQUEST, format!("bad upgrade: {e}\n")).into_response();
        }
    };
    if offer.is_some() {
        response.headers_mut().insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(codec.subprotocol()),
        );
    }
    tokio::spawn(async move {
        match upgraded.await {
            Ok(ws) => {
                let upgrade = Box::new(Upgrade {
                    codec,
                    remote,
                    fd,
                    bearer,
                    headers: forwarded,
                    refuse,
                    open: Some(guard),
                });
                // A task of its own, spawned with the bare `serve` future
                // (a wrapping block would keep its own copy of what it
                // moves in): this one, sized for the upgrade future as
                // well, ends here and its memory is freed.
                if echo {
                    tokio::spawn(connection::echo::serve(node, Box::new(ws), upgrade));
                } else {
                    tokio::spawn(connection::serve(node, Box::new(ws), upgrade));
                }
            }
            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
        }
    });
    response.map(Body::new)
}

//! The socketioxide peer of roomcast-bench: socketioxide with its Redis
//! adapter, doing the least a chat relay can do, so the benchmark measures
//! the stack rather than application code.
//!
//!   join     `42["join", room]`            -> the socket joins the room, ack `{ok: true}`
//!   publish  `42["publish", {room, data}]` -> `io.to(room).emit("message", {room, data})`
//!
//! Several of these processes behind one Redis form a cluster: a publish on
//! one node reaches the room's members on every node through the adapter.
//!
//! Settings (environment):
//!   REDIS_URL  redis://127.0.0.1:PORT (required; Redis 7 or later, RESP3)
//!   LISTEN     address to bind (127.0.0.1:0: a free port)
//!
//! Prints `listening on http://ADDR` once it serves; SIGTERM or SIGINT stops it.

use std::convert::Infallible;

use serde_json::{json, Value};
use socketioxide::adapter::Adapter;
use socketioxide::extract::{AckSender, Data, SocketRef};
use socketioxide::handler::ConnectHandler;
use socketioxide::SocketIo;
use socketioxide_redis::{RedisAdapter, RedisAdapterCtr};

/// Registers the event handlers. It runs as a connect *middleware*:
/// socketioxide awaits middlewares before it sends the connect answer (`40`),
/// while the connect handler proper is spawned only after it, so handlers set
/// there may not be in place yet when a client's first event (a `join` sent
/// as soon as `40` arrives) is dispatched, and that event is dropped.
async fn register_handlers<A: Adapter>(
    socket: SocketRef<A>,
    io: SocketIo<A>,
) -> Result<(), Infallible> {
    socket.on(
        "join",
        async |socket: SocketRef<A>, Data::<String>(room), ack: AckSender<A>| {
            socket.join(room);
            let _ = ack.send(&json!({"ok": true}));
        },
    );
    socket.on("publish", async move |Data::<Value>(msg)| {
        let Some(room) = msg.get("room").and_then(Value::as_str).map(str::to_owned) else {
            return;
        };
        let _ = io.to(room).emit("message", &msg).await;
    });
    Ok(())
}

async fn on_connect<A: Adapter>(_socket: SocketRef<A>) {}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let redis_url = std::env::var("REDIS_URL").map_err(|_| "REDIS_URL is required")?;
    let listen = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:0".into());
    let sep = if redis_url.contains('?') { '&' } else { '?' };
    let client = redis::Client::open(format!("{redis_url}{sep}protocol=resp3"))?;
    let adapter = RedisAdapterCtr::new_with_redis(&client).await?;
    let (layer, io) = SocketIo::builder()
        .with_adapter::<RedisAdapter<_>>(adapter)
        .build_layer();
    io.ns("/", on_connect.with(register_handlers)).await?;
    let app = axum::Router::new().layer(layer);
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    Ok(())
}

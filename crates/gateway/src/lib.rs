//! The roomcast gateway node.
//!
//! Where things are, in layers; a module uses only those of its own layer
//! or below, and nothing below the node layer names [`node::Node`]:
//!
//! - edge (HTTP and WebSocket, above the node):
//!   [`front`] (accept loop, per-address and pending-head limits, HTTP
//!   timeouts), [`server`] (routes, the upgrade), [`api`] (the HTTP API),
//!   [`layers`] (its tower layers), [`demo`] (the demo page), [`admin`]
//!   (the admin page, the API again behind its session cookie),
//!   [`connection`] (one connection's task: hello, commands, writes),
//!   [`drain`] (how a node stops);
//! - node: [`node`] (the operations connections and the API share, and
//!   what they hold);
//! - below the node, each taking only what it uses:
//!   [`hub`] (rooms, their local members, fan-out), [`routing`] (direct
//!   messages, disconnects and session moves across nodes), [`presence`]
//!   (the `Presence` trait and its local and cluster engines), [`session`]
//!   (resume tokens, parked sessions, a session's lifecycle), [`proxy`]
//!   (asking the application's backend), [`heartbeat`] (liveness by shard
//!   tickers, the connection registry), [`node_stats`] (this node's
//!   samples of itself and the cluster view built from every node's);
//! - a connection's parts: [`conn_handle`] (what the rest of the node holds
//!   of a connection), [`outbox`] (its bounded outbound queue),
//!   [`direct_write`] (frames written straight to its socket, bypassing its
//!   task), [`websocket`] (the WebSocket options);
//! - ground: [`config`], [`live_config`] (what reloads while the node
//!   runs), [`auth`], [`limits`], [`metrics`], [`error`], [`telemetry`].
//!
//! How a publish travels through these, hop by hop, is in
//! `docs/architecture.md`, "Follow a publish".

pub mod admin;
pub mod api;
pub mod auth;
pub mod config;
pub mod conn_handle;
pub mod connection;
pub mod demo;
pub mod direct_write;
pub mod drain;
pub mod error;
pub mod front;
pub mod heartbeat;
pub mod hub;
pub mod layers;
pub mod limits;
pub mod live_config;
pub mod metrics;
pub mod node;
pub mod node_stats;
pub mod outbox;
pub mod presence;
pub mod proxy;
pub mod routing;
pub mod server;
pub mod session;
pub mod telemetry;
pub mod websocket;

use std::sync::Arc;
use std::time::{Duration, Instant};

use config::Config;
use node::Node;

/// Binds the listening socket with `backlog` pending connections. The
/// standard library's 128 is too few for a reconnect storm: when a node dies,
/// thousands of its clients connect to the others within a few hundred
/// milliseconds, and every SYN beyond the backlog is dropped and retried by
/// the client's kernel only after a second (then three).
fn bind(addr: std::net::SocketAddr, backlog: u32) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Runs a node until it has drained after SIGTERM/SIGINT.
pub async fn run(config: Config, file: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    let listener = bind(config.listen, config.listen_backlog)
        .map_err(|e| anyhow::anyhow!("listen: cannot bind {}: {e}", config.listen))?;
    let addr = listener.local_addr()?;
    let node = Node::new(config, file).await?;
    let registry = node.registry.clone();
    live_config::spawn_watcher(&node.live, node.metrics.clone(), move |live| {
        registry.refresh_ahead(proxy::refresh_ahead_ms(&live.proxy));
    });
    tracing::info!(
        node = %node.id,
        engine = node.broker.engine(),
        "roomcast gateway listening on http://{addr} (WebSocket ws://{addr}/ws)"
    );
    let app = server::router(node.clone());
    let shutdown = {
        let node = node.clone();
        async move {
            roomcast_service::wait_for_signal().await;
            let timeout = Duration::from_millis(node.config.drain.timeout_ms);
            let deadline = Instant::now() + timeout;
            // Whatever happens, the process is gone by the drain timeout.
            std::thread::spawn(move || {
                std::thread::sleep(timeout);
                eprintln!("drain timeout reached; exiting");
                std::process::exit(0);
            });
            node.drain.start();
            tokio::spawn(async {
                roomcast_service::wait_for_signal().await;
                eprintln!("second signal; exiting now");
                std::process::exit(1);
            });
            let window = Duration::from_millis(node.config.drain.window_ms);
            node.drain
                .run(&node.registry, &node.metrics, window, deadline)
                .await;
            // Hand-overs must reach the presence service before we go.
            let left = deadline.saturating_duration_since(Instant::now());
            node.presence.flush(left.min(Duration::from_secs(3))).await;
        }
    };
    front::serve(listener, node.clone(), app, shutdown).await;
    let _: Arc<Node> = node;
    Ok(())
}

//! The roomcast gateway node.
//!
//! Where things are, by name:
//! - [`front`]: the accept loop, per-address and pending-head limits, HTTP
//!   timeouts;
//! - [`server`]: HTTP routes and the WebSocket upgrade;
//! - [`connection`]: one connection's task (hello, commands, writes);
//! - [`node`]: the operations shared by connections and the API;
//! - [`hub`]: rooms and their local members, fan-out;
//! - [`outbox`]: a connection's bounded outbound queue;
//! - [`heartbeat`]: liveness by shard tickers, and the connection registry;
//! - [`session`]: resume tokens and parked sessions;
//! - [`auth`], [`limits`], [`metrics`], [`drain`], [`config`], [`api`].

pub mod api;
pub mod auth;
pub mod config;
pub mod connection;
pub mod demo;
pub mod drain;
pub mod error;
pub mod front;
pub mod handle;
pub mod heartbeat;
pub mod hub;
pub mod layers;
pub mod limits;
pub mod live;
pub mod metrics;
pub mod node;
pub mod outbox;
pub mod presence;
pub mod proxy;
pub mod routing;
pub mod server;
pub mod session;
pub mod telemetry;
pub mod websocket;
pub mod wire;

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
    live::spawn_watcher(&node.live, node.metrics.clone());
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

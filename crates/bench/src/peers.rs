//! The servers under test, each started the same way on this machine: a
//! number of nodes behind one `redis-server` of their own (on a free port,
//! through roomcast-testkit), every process killed when the [`Deployment`]
//! is dropped.
//!
//! - roomcast: `roomcast-gateway` nodes + `roomcast-presence` + Redis (or one
//!   node in its embedded in-memory mode, `standalone`), release binaries from
//!   `ROOMCAST_BIN_DIR`;
//! - Socket.IO 4.8 + `@socket.io/redis-adapter`: `node bench/peers/socketio/server.js`;
//! - socketioxide + socketioxide-redis: `bench/peers/socketioxide`, built as
//!   `socketioxide-peer`.
//!
//! `scripts/bench-peers.sh` installs the Socket.IO peer's npm packages (from
//! its lock file) and builds the socketioxide peer.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use roomcast_testkit::redis::RedisServer;
use roomcast_testkit::{wait_for_listen_line, workspace_root, Gateway, PresenceService, Process};
use serde::{Deserialize, Serialize};

use crate::load::{socketio, Protocol};

/// Which server a deployment runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerKind {
    Roomcast,
    SocketIo,
    Socketioxide,
}

impl ServerKind {
    pub const ALL: [ServerKind; 3] = [
        ServerKind::Roomcast,
        ServerKind::SocketIo,
        ServerKind::Socketioxide,
    ];

    pub fn parse(name: &str) -> Result<ServerKind> {
        match name {
            "roomcast" => Ok(ServerKind::Roomcast),
            "socketio" | "socket.io" => Ok(ServerKind::SocketIo),
            "socketioxide" => Ok(ServerKind::Socketioxide),
            other => bail!("unknown server {other:?} (roomcast, socketio, socketioxide)"),
        }
    }

    /// A list such as `roomcast,socketio` or `all`.
    pub fn parse_list(list: &str) -> Result<Vec<ServerKind>> {
        if list == "all" {
            return Ok(Self::ALL.to_vec());
        }
        list.split(',')
            .filter(|s| !s.is_empty())
            .map(Self::parse)
            .collect()
    }

    pub fn name(self) -> &'static str {
        match self {
            ServerKind::Roomcast => "roomcast",
            ServerKind::SocketIo => "socketio",
            ServerKind::Socketioxide => "socketioxide",
        }
    }

    /// The name in tables.
    pub fn label(self) -> &'static str {
        match self {
            ServerKind::Roomcast => "roomcast",
            ServerKind::SocketIo => "Socket.IO 4.8 + redis-adapter",
            ServerKind::Socketioxide => "socketioxide 0.18 + redis",
        }
    }

    pub fn protocol(self) -> Protocol {
        match self {
            ServerKind::Roomcast => Protocol::Roomcast,
            ServerKind::SocketIo | ServerKind::Socketioxide => Protocol::SocketIo,
        }
    }

    /// The WebSocket path clients open, and the subprotocol they offer.
    pub fn ws_endpoint(self) -> (&'static str, Option<&'static str>) {
        match self.protocol() {
            Protocol::Roomcast => ("/ws", Some("roomcast.v1.json")),
            Protocol::SocketIo => (socketio::PATH, None),
        }
    }
}

/// How to start a deployment.
#[derive(Clone, Debug)]
pub struct DeployOptions {
    pub nodes: usize,
    /// roomcast only: one node in its embedded in-memory mode (no Redis, no
    /// presence service).
    pub standalone: bool,
    /// Let the servers negotiate permessage-deflate.
    pub deflate: bool,
}

/// A running set of servers.
pub struct Deployment {
    pub kind: ServerKind,
    nodes: Vec<Node>,
    presence: Option<PresenceService>,
    redis: Option<RedisServer>,
}

struct Node {
    addr: SocketAddr,
    process: Process,
}

/// The settings of every roomcast node the benchmark starts: no limit that
/// a load generator on one address would trip (per-address connections,
/// per-connection rates, rooms per publisher), enough history for a storm's
/// resumes, a short drain, quiet logs.
fn roomcast_env(
    i: usize,
    redis: Option<&str>,
    presence: Option<&str>,
    deflate: bool,
) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("ROOMCAST_LISTEN", "127.0.0.1:0".to_string()),
        ("ROOMCAST_NODE__ID", format!("bench-{i}")),
        ("ROOMCAST_API__KEY", "bench-key".to_string()),
        (
            "ROOMCAST_AUTH__RESUME_SECRET",
            "bench-resume-secret".to_string(),
        ),
        (
            "ROOMCAST_LOG__LEVEL",
            "warn,roomcast_gateway=info".to_string(),
        ),
        ("ROOMCAST_LIMITS__MAX_CONNECTIONS", "200000".to_string()),
        ("ROOMCAST_LIMITS__MAX_CONNECTIONS_PER_IP", "0".to_string()),
        (
            "ROOMCAST_LIMITS__MESSAGES_PER_SECOND",
            "1000000".to_string(),
        ),
        ("ROOMCAST_LIMITS__MESSAGE_BURST", "1000000".to_string()),
        (
            "ROOMCAST_LIMITS__MAX_ROOMS_PER_CONNECTION",
            "100000".to_string(),
        ),
        ("ROOMCAST_HISTORY__SIZE", "10000".to_string()),
        ("ROOMCAST_DRAIN__WINDOW_MS", "2000".to_string()),
        ("ROOMCAST_DRAIN__TIMEOUT_MS", "10000".to_string()),
        ("ROOMCAST_WEBSOCKET__COMPRESSION", deflate.to_string()),
    ];
    if let Some(url) = redis {
        env.push(("ROOMCAST_REDIS__URL", url.to_string()));
    }
    if let Some(url) = presence {
        env.push(("ROOMCAST_PRESENCE__URL", url.to_string()));
    }
    env
}

/// Where `bench/peers` is (`ROOMCAST_BENCH_PEERS` overrides it).
fn peers_dir() -> PathBuf {
    std::env::var_os("ROOMCAST_BENCH_PEERS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("bench/peers"))
}

/// The built socketioxide peer: in `ROOMCAST_BIN_DIR`, next to this
/// executable, or in the workspace's release folder.
fn socketioxide_binary() -> Result<PathBuf> {
    let mut places = Vec::new();
    if let Some(dir) = std::env::var_os("ROOMCAST_BIN_DIR") {
        places.push(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(PathBuf::from))
    {
        places.push(dir);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    places.push(target.join("release"));
    places
        .iter()
        .map(|d| d.join("socketioxide-peer"))
        .find(|p| p.exists())
        .ok_or_else(|| anyhow!("socketioxide-peer is not built: run scripts/bench-peers.sh"))
}

impl Deployment {
    /// Starts Redis (unless standalone), the presence service (roomcast),
    /// then the nodes; waits until each listens.
    pub async fn start(kind: ServerKind, options: DeployOptions) -> Result<Deployment> {
        // The harness is blocking (and panics on failure, with the logs).
        tokio::task::spawn_blocking(move || Deployment::start_blocking(kind, &options))
            .await
            .map_err(|e| anyhow!("starting {}: {}", kind.name(), panic_text(e)))?
    }

    fn start_blocking(kind: ServerKind, options: &DeployOptions) -> Result<Deployment> {
        if options.nodes == 0 {
            bail!("a deployment needs at least one node");
        }
        let standalone = options.standalone && kind == ServerKind::Roomcast;
        if standalone && options.nodes > 1 {
            bail!("a standalone roomcast deployment has one node");
        }
        let redis = (!standalone).then(RedisServer::start);
        let redis_url = redis.as_ref().map(RedisServer::url);
        let presence = match (kind, &redis_url) {
            (ServerKind::Roomcast, Some(url)) => Some(PresenceService::start(
                url,
                &[("ROOMCAST_LOG__LEVEL", "warn,roomcast_presence=info")],
            )),
            _ => None,
        };
        let mut nodes = Vec::new();
        for i in 0..options.nodes {
            let node = match kind {
                ServerKind::Roomcast => {
                    let env = roomcast_env(
                        i,
                        redis_url.as_deref(),
                        presence.as_ref().map(PresenceService::url).as_deref(),
                        options.deflate,
                    );
                    let refs: Vec<(&str, &str)> =
                        env.iter().map(|(k, v)| (*k, v.as_str())).collect();
                    let gw = Gateway::start(&refs);
                    Node {
                        addr: gw.addr,
                        process: gw.process,
                    }
                }
                ServerKind::SocketIo => {
                    let dir = peers_dir().join("socketio");
                    if !dir.join("node_modules").exists() {
                        bail!(
                            "{}/node_modules is missing: run scripts/bench-peers.sh",
                            dir.display()
                        );
                    }
                    let node_bin = std::env::var_os("ROOMCAST_BENCH_NODE")
                        .map(PathBuf::from)
                        .unwrap_or_else(|| PathBuf::from("node"));
                    let script = dir.join("server.js");
                    let env = peer_env(redis_url.as_deref(), options.deflate);
                    let refs: Vec<(&str, String)> =
                        env.iter().map(|(k, v)| (*k, v.clone())).collect();
                    start_peer("socketio", &node_bin, &[&script.to_string_lossy()], &refs)
                }
                ServerKind::Socketioxide => {
                    let env = peer_env(redis_url.as_deref(), options.deflate);
                    let refs: Vec<(&str, String)> =
                        env.iter().map(|(k, v)| (*k, v.clone())).collect();
                    start_peer("socketioxide", &socketioxide_binary()?, &[], &refs)
                }
            };
            nodes.push(node);
        }
        Ok(Deployment {
            kind,
            nodes,
            presence,
            redis,
        })
    }

    /// The nodes' WebSocket addresses.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.addr).collect()
    }

    pub fn node_pids(&self) -> Vec<u32> {
        self.nodes.iter().map(|n| n.process.pid()).collect()
    }

    /// Every process of the deployment: nodes, presence service, Redis.
    pub fn all_pids(&self) -> Vec<u32> {
        let mut pids = self.node_pids();
        pids.extend(self.presence.as_ref().map(|p| p.process.pid()));
        pids.extend(self.redis.as_ref().and_then(RedisServer::pid));
        pids
    }

    /// "2 nodes + presence + Redis", for tables.
    pub fn describe(&self) -> String {
        let mut parts = vec![format!(
            "{} node{}",
            self.nodes.len(),
            if self.nodes.len() == 1 { "" } else { "s" }
        )];
        if self.presence.is_some() {
            parts.push("presence".into());
        }
        if self.redis.is_some() {
            parts.push("Redis".into());
        } else {
            parts.push("in-memory".into());
        }
        parts.join(" + ")
    }

    /// `kill -9` node `i`.
    pub fn kill(&self, i: usize) {
        self.nodes[i].process.signal("KILL");
    }

    /// SIGTERM to node `i` (roomcast drains).
    pub fn terminate(&self, i: usize) {
        self.nodes[i].process.signal("TERM");
    }
}

fn peer_env(redis: Option<&str>, deflate: bool) -> Vec<(&'static str, String)> {
    vec![
        ("REDIS_URL", redis.unwrap_or_default().to_string()),
        ("LISTEN", "127.0.0.1:0".to_string()),
        ("PEER_DEFLATE", if deflate { "1" } else { "0" }.to_string()),
    ]
}

fn start_peer(name: &str, program: &PathBuf, args: &[&str], env: &[(&str, String)]) -> Node {
    let mut process = Process::spawn(name, program, args, env);
    let addr = wait_for_listen_line(&mut process, Duration::from_secs(30));
    Node { addr, process }
}

fn panic_text(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panicked".into()),
        Err(e) => e.to_string(),
    }
}

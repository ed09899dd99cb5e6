//! What the presence integration tests share: the real `roomcast-presence`
//! binary on a loopback port ([`Presence`]), JSON calls to it, a Redis
//! subscriber that decodes presence envelopes ([`Listener`]), and a tiny
//! model of a gateway's state for `PresenceClient` snapshots ([`Gateway`]).
//!
//! Redis itself comes from the shared harness (`roomcast_testkit::redis`).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fred::prelude::{Builder, ClientLike, EventInterface, PubsubInterface};
use parking_lot::Mutex;
use roomcast_presence::api::Op;
use roomcast_presence_client::client::{PresenceClient, Snapshot};
use roomcast_protocol::envelope::{names, Envelope, Kind};
use roomcast_testkit::{binary, http_request, wait_for_listen_line, Process};
use serde_json::Value;

pub const KEY: &str = "test-key";

/// A running `roomcast-presence`, killed on drop.
pub struct Presence {
    pub process: Process,
    pub addr: SocketAddr,
    redis_url: String,
    env: Vec<(String, String)>,
}

impl Presence {
    /// Starts the service on a free port against `redis_url`, with the key
    /// [`KEY`]; `env` adds or overrides variables.
    pub fn start(redis_url: &str, env: &[(&str, &str)]) -> Presence {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (process, addr) = spawn(redis_url, &env, "127.0.0.1:0");
        Presence {
            process,
            addr,
            redis_url: redis_url.to_string(),
            env,
        }
    }

    /// Kills the process (SIGKILL) and starts a fresh one on the same port
    /// and Redis: a presence crash and restart.
    pub fn restart(&mut self) {
        self.process.signal("KILL");
        self.process.wait_exit(Duration::from_secs(5));
        let listen = self.addr.to_string();
        let (process, addr) = spawn(&self.redis_url, &self.env, &listen);
        assert_eq!(addr, self.addr);
        self.process = process;
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Freezes the process (SIGSTOP) and waits until the kernel says it is
    /// stopped: its sockets stay open, nothing is answered.
    pub fn pause(&self) {
        self.process.signal("STOP");
        let pid = self.process.pid();
        let stopped = roomcast_testkit::wait_until(Duration::from_secs(5), || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')
                        .map(|(_, rest)| rest.trim_start().starts_with('T'))
                })
                .unwrap_or(false)
        });
        assert!(stopped, "presence {pid} did not stop");
    }

    pub fn resume(&self) {
        self.process.signal("CONT");
    }

    /// A JSON call with the key; (status, body as JSON or Null).
    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call_with(method, path, body, Some(KEY))
    }

    pub fn call_with(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        key: Option<&str>,
    ) -> (u16, Value) {
        let auth = key.map(|k| format!("Bearer {k}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("Authorization", a)])
            .unwrap_or_default();
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let (status, text) =
            tokio::task::block_in_place(|| http_request(self.addr, method, path, &headers, &body))
                .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// A sync from `node`; panics unless it answers 200. Returns the answer.
    pub fn sync(&self, node: &str, body: Value) -> Value {
        let (status, answer) = self.call("POST", &format!("/v1/nodes/{node}/sync"), Some(body));
        assert_eq!(status, 200, "sync: {answer}");
        answer
    }

    /// Session ids of a room's members.
    pub fn members(&self, room: &str) -> Vec<String> {
        let (status, body) = self.call("GET", &format!("/v1/rooms/{room}/members"), None);
        assert_eq!(status, 200, "{body}");
        body["members"]
            .as_array()
            .expect("members")
            .iter()
            .map(|m| m["session"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// The value of one metric line.
    pub fn metric(&self, name: &str) -> u64 {
        let (status, text) =
            tokio::task::block_in_place(|| http_request(self.addr, "GET", "/metrics", &[], ""))
                .expect("metrics");
        assert_eq!(status, 200);
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
    }
}

fn spawn(redis_url: &str, env: &[(String, String)], listen: &str) -> (Process, SocketAddr) {
    let mut vars: Vec<(&str, String)> = vec![
        ("ROOMCAST_LISTEN", listen.to_string()),
        ("ROOMCAST_REDIS__URL", redis_url.to_string()),
        ("ROOMCAST_PRESENCE__KEY", KEY.to_string()),
        (
            "ROOMCAST_LOG__LEVEL",
            "info,roomcast_presence=debug".to_string(),
        ),
    ];
    for (k, v) in env {
        vars.retain(|(key, _)| key != k);
        vars.push((k.as_str(), v.clone()));
    }
    let mut process = Process::spawn("presence", &binary("roomcast-presence"), &[], &vars);
    let addr = wait_for_listen_line(&mut process, Duration::from_secs(30));
    (process, addr)
}

/// A presence event as a test sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub kind: &'static str,
    pub room: String,
    pub session: String,
}

pub fn seen(kind: &'static str, room: &str, session: &str) -> Seen {
    Seen {
        kind,
        room: room.into(),
        session: session.into(),
    }
}

/// A Redis client subscribed to rooms' channels, decoding envelopes.
pub struct Listener {
    client: fred::prelude::Client,
    rx: tokio::sync::broadcast::Receiver<fred::types::Message>,
}

impl Listener {
    /// SUBSCRIBEs (or, on a cluster URL, SSUBSCRIBEs) to the rooms' channels.
    pub async fn subscribe(redis_url: &str, rooms: &[&str]) -> Listener {
        let config = fred::prelude::Config::from_url(redis_url).expect("redis url");
        let sharded = config.server.is_clustered();
        // fred hands messages over through a broadcast channel (32 by
        // default): make room for bursts, so none is lost to a lag.
        let client = Builder::from_config(config)
            .with_performance_config(|p| p.broadcast_channel_capacity = 100_000)
            .build()
            .expect("redis client");
        client.init().await.expect("connect to redis");
        let rx = client.message_rx();
        for room in rooms {
            let channel = names::room_channel(room);
            if sharded {
                client.ssubscribe(channel).await.expect("ssubscribe");
            } else {
                client.subscribe(channel).await.expect("subscribe");
            }
        }
        Listener { client, rx }
    }

    /// The next presence event, within `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<Seen> {
        let message = match tokio::time::timeout(timeout, self.rx.recv()).await.ok()? {
            Ok(message) => message,
            Err(e) => panic!("subscriber lost messages: {e}"),
        };
        let bytes = message.value.as_bytes().expect("binary message");
        let env = Envelope::decode(bytes).expect("an envelope");
        assert_eq!(env.node, "presence");
        assert_eq!(env.offset, 0);
        assert_eq!(
            message.channel.to_string(),
            names::room_channel(&env.room),
            "published on the room's channel"
        );
        assert!(env.ts > 1_600_000_000_000_000, "ts is in microseconds");
        let member = env.member.expect("a member");
        let kind = match env.kind {
            Kind::PresenceJoin => "join",
            Kind::PresenceLeave => "leave",
            other => panic!("unexpected envelope kind {other:?}"),
        };
        Some(Seen {
            kind,
            room: env.room,
            session: member.session,
        })
    }

    /// The next `n` events; panics if they do not come within 10 s.
    pub async fn take(&mut self, n: usize) -> Vec<Seen> {
        let mut out = Vec::new();
        while out.len() < n {
            match self.next(Duration::from_secs(10)).await {
                Some(e) => out.push(e),
                None => panic!("expected {n} events, got {out:?}"),
            }
        }
        out
    }

    /// Asserts that no event arrives for `quiet`.
    pub async fn expect_none(&mut self, quiet: Duration) {
        if let Some(e) = self.next(quiet).await {
            panic!("unexpected presence event {e:?}");
        }
    }

    pub async fn close(self) {
        let _ = self.client.quit().await;
    }
}

/// session → (user, rooms).
type Sessions = BTreeMap<String, (String, Vec<String>)>;

/// A model of a gateway's connections: updated first, then reported, as a
/// real gateway must, so `snapshot()` always reflects every queued op.
#[derive(Clone, Default)]
pub struct Gateway {
    sessions: Arc<Mutex<Sessions>>,
}

impl Gateway {
    pub fn snapshot(&self) -> Snapshot {
        let sessions = self.sessions.clone();
        Arc::new(move || {
            let mut ops = Vec::new();
            for (session, (user, rooms)) in sessions.lock().iter() {
                ops.push(Op::connect(session.clone(), user.clone(), None));
                for room in rooms {
                    ops.push(Op::join(session.clone(), room.clone()));
                }
            }
            ops
        })
    }

    /// Applies `op` to the model, then enqueues it.
    pub fn report(&self, client: &PresenceClient, op: Op) {
        {
            let mut sessions = self.sessions.lock();
            match &op {
                Op::Connect { session, user, .. } => {
                    sessions
                        .entry(session.clone())
                        .or_insert_with(|| (user.clone(), Vec::new()));
                }
                Op::Join { session, room } => {
                    if let Some((_, rooms)) = sessions.get_mut(session) {
                        if !rooms.contains(room) {
                            rooms.push(room.clone());
                        }
                    }
                }
                Op::Leave { session, room } => {
                    if let Some((_, rooms)) = sessions.get_mut(session) {
                        rooms.retain(|r| r != room);
                    }
                }
                Op::Disconnect { session } | Op::Handoff { session, .. } => {
                    sessions.remove(session);
                }
            }
        }
        client.enqueue(op);
    }
}

/// Polls an async condition every 50 ms for up to `timeout`.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

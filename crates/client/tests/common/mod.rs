//! Helpers shared by the client's integration tests: waiting for a kind of
//! event, publishing over the HTTP API, and (re)starting a gateway on a given
//! address. Servers come from `roomcast-testkit`; this module only adds what
//! is specific to driving a client.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use roomcast_client::{Backoff, ClientBuilder, ConnectionState, Event, Events, RoomMessage};
use roomcast_testkit::{http_request, wait_until, Gateway, Process};
use serde_json::Value;

/// How long a test waits for something that should happen promptly.
pub const WAIT: Duration = Duration::from_secs(15);

/// A builder aimed at `urls` with quick reconnects, so tests do not wait on
/// production backoff.
pub fn quick_client(urls: &[String]) -> ClientBuilder {
    roomcast_client::Client::builder()
        .urls(urls.iter().cloned())
        .backoff(Backoff {
            base: Duration::from_millis(50),
            cap: Duration::from_millis(400),
            max_attempts: None,
        })
        .connect_timeout(Duration::from_secs(2))
}

/// Reads events until `pick` returns something; panics after [`WAIT`].
pub async fn next_event<T>(
    events: &mut Events,
    what: &str,
    mut pick: impl FnMut(&Event) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(event)) => {
                if let Some(found) = pick(&event) {
                    return found;
                }
            }
            Ok(None) => panic!("the event stream ended while waiting for {what}"),
            Err(_) => panic!("no {what} within {WAIT:?}"),
        }
    }
}

/// The next `n` messages of `room`, other events skipped.
pub async fn messages(events: &mut Events, room: &str, n: usize) -> Vec<RoomMessage> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        let m = next_event(
            events,
            &format!("message {} of {room}", got.len() + 1),
            |e| match e {
                Event::Message(m) if m.room == room => Some(m.clone()),
                _ => None,
            },
        )
        .await;
        got.push(m);
    }
    got
}

/// Waits for the next `Connected` state; returns whether it was a resume.
pub async fn connected(events: &mut Events) -> (bool, roomcast_client::SessionInfo) {
    next_event(events, "Connected", |e| match e {
        Event::State(ConnectionState::Connected { resumed, session }) => {
            Some((*resumed, session.clone()))
        }
        _ => None,
    })
    .await
}

/// Messages already buffered for `room` (nothing is awaited).
pub fn buffered_messages(events: &mut Events, room: &str) -> Vec<RoomMessage> {
    let mut got = Vec::new();
    while let Some(e) = events.try_recv() {
        if let Event::Message(m) = e {
            if m.room == room {
                got.push(m);
            }
        }
    }
    got
}

/// Publishes through the HTTP API; returns the offset.
pub async fn http_publish(addr: SocketAddr, room: &str, data: Value) -> u64 {
    let body = serde_json::json!({"room": room, "data": data}).to_string();
    let (status, answer) = tokio::task::spawn_blocking(move || {
        http_request(
            addr,
            "POST",
            "/api/publish",
            &[("Authorization", "Bearer test-key")],
            &body,
        )
    })
    .await
    .expect("publish task")
    .expect("publish request");
    assert_eq!(status, 200, "publish answered {status}: {answer}");
    let answer: Value = serde_json::from_str(&answer).expect("publish answer is JSON");
    answer["offset"]
        .as_u64()
        .expect("publish answer has an offset")
}

/// GET `path` of the HTTP API with the test key; the answer as JSON.
pub async fn http_get(addr: SocketAddr, path: &str) -> Value {
    let path = path.to_string();
    let (status, answer) = tokio::task::spawn_blocking(move || {
        http_request(
            addr,
            "GET",
            &path,
            &[("Authorization", "Bearer test-key")],
            "",
        )
    })
    .await
    .expect("get task")
    .expect("get request");
    assert_eq!(status, 200, "GET answered {status}: {answer}");
    serde_json::from_str(&answer).expect("answer is JSON")
}

/// The value of an unlabelled metric of the node (0 when absent).
pub async fn metric(addr: SocketAddr, name: &str) -> f64 {
    let (status, text) =
        tokio::task::spawn_blocking(move || http_request(addr, "GET", "/metrics", &[], ""))
            .await
            .expect("metrics task")
            .expect("metrics request");
    assert_eq!(status, 200);
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Starts a gateway listening on `addr` (a restart on the same port), without
/// blocking the runtime's thread.
pub async fn start_gateway_on(addr: SocketAddr) -> Gateway {
    let listen = addr.to_string();
    tokio::task::spawn_blocking(move || Gateway::start(&[("ROOMCAST_LISTEN", &listen)]))
        .await
        .expect("gateway start task")
}

/// `Gateway::start` without blocking the runtime's thread.
pub async fn start_gateway(env: &'static [(&'static str, &'static str)]) -> Gateway {
    tokio::task::spawn_blocking(move || Gateway::start(env))
        .await
        .expect("gateway start task")
}

/// Stops (SIGSTOP) a process and waits until the kernel reports it stopped:
/// `kill` returns before every thread has halted, and a node still running
/// for that instant could answer a frame the test means to leave unanswered.
pub async fn freeze(process: &Process) {
    process.signal("STOP");
    let pid = process.pid();
    let stopped = tokio::task::spawn_blocking(move || {
        wait_until(Duration::from_secs(5), || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    // The state follows the parenthesised command name.
                    let after_name = stat.rsplit_once(')')?.1;
                    after_name.split_whitespace().next().map(|s| s == "T")
                })
                .unwrap_or(false)
        })
    })
    .await
    .expect("freeze task");
    assert!(stopped, "process {pid} did not stop");
}

/// Now, in Unix seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// An HS256 JWT for `user` that may join any room, valid for an hour,
/// signed with `secret`.
pub fn hs256_token(secret: &str, user: &str) -> String {
    hs256_jwt(
        secret,
        &serde_json::json!({"sub": user, "exp": unix_now() + 3600, "rooms": ["*"]}),
    )
}

/// An HS256 JWT with these claims, signed with `secret`.
pub fn hs256_jwt(secret: &str, claims: &Value) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use hmac::{Hmac, Mac};

    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signing_input = format!("{header}.{claims}");
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key size");
    mac.update(signing_input.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{signature}")
}

//! The proxies (connect, join, publish, rpc), live configuration reload and
//! a single node's webhooks, against the example backend
//! (`examples/backend/backend.py`) run as a real HTTP server.

use std::path::PathBuf;
use std::time::Duration;

use roomcast_protocol::{ClientFrame, Codec, ErrorCode, ServerFrame};
use roomcast_testkit::ws::{ack_offset, join, join_watching, publish, Event, RawClient};
use roomcast_testkit::{http_request, wait_until, Gateway, HookBackend};
use serde_json::{json, Value};

/// How long the backend's "slow" answers take; the proxies' timeouts here
/// are far shorter.
const SLOW_S: f64 = 3.0;

fn config_file(name: &str, text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "roomcast-hooks-{name}-{}-{}.toml",
        std::process::id(),
        roomcast_testkit::free_port()
    ));
    std::fs::write(&path, text).unwrap();
    path
}

fn start(name: &str, toml: &str) -> (Gateway, PathBuf) {
    let path = config_file(name, toml);
    let gw = Gateway::start(&[("ROOMCAST_CONFIG", path.to_str().unwrap())]);
    (gw, path)
}

async fn hello(gw: &Gateway, token: Option<&str>) -> (RawClient, ServerFrame) {
    let mut c = RawClient::connect(&gw.ws_url(), Codec::Json).await;
    c.send(&ClientFrame::Hello {
        id: Some(1),
        token: token.map(str::to_string),
        resume: None,
    })
    .await;
    let first = c.recv().await;
    (c, first)
}

/// `call` proxied to `url` with a 300 ms timeout, failing closed, except
/// in the `lenient` namespace, which fails open.
fn strict_and_lenient(call: &str, url: &str) -> String {
    format!(
        "[proxy.{call}]\nurl = \"{url}\"\ntimeout_ms = 300\n\
         [proxy.namespaces.lenient.{call}]\nurl = \"{url}\"\ntimeout_ms = 300\nfail_open = true\n"
    )
}

fn error_of(frame: &ServerFrame) -> (ErrorCode, String) {
    match frame {
        ServerFrame::Error { code, message, .. } => (*code, message.clone()),
        other => panic!("expected an error frame, got {other:?}"),
    }
}

fn metric(gw: &Gateway, line_start: &str) -> u64 {
    let text = http_request(gw.addr, "GET", "/metrics", &[], "").unwrap().1;
    assert!(text.contains(line_start), "no metric {line_start}");
    gw.metric(line_start)
}

#[tokio::test]
async fn connect_proxy_accepts_assigns_identity_and_refuses() {
    let backend = HookBackend::start("unused", SLOW_S);
    let (gw, _file) = start(
        "connect",
        &format!(
            r#"
[proxy]
key = "proxy-key"
forward_headers = ["x-app-version"]
[proxy.connect]
url = "{}"
"#,
            backend.url("/connect")
        ),
    );

    // The backend names the user, its info and its rooms.
    let mut c = RawClient::connect_with(
        &gw.ws_url(),
        Codec::Json,
        &[("X-App-Version", "7.1"), ("X-Other", "not forwarded")],
        true,
    )
    .await
    .unwrap();
    let welcome = c.hello(Some("user:alice")).await;
    let ServerFrame::Welcome { user, .. } = welcome else {
        unreachable!()
    };
    assert_eq!(user, "alice");
    let calls = backend.calls("connect");
    assert_eq!(calls.len(), 1, "{calls:?}");
    let call = &calls[0];
    assert_eq!(call["body"]["token"], "user:alice");
    assert_eq!(call["body"]["protocol"], "json");
    assert_eq!(call["body"]["resume"], false);
    assert_eq!(call["body"]["headers"], json!({"x-app-version": "7.1"}));
    assert!(call["body"]["remote_addr"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert_eq!(call["headers"]["authorization"], "Bearer proxy-key");
    assert!(call["headers"]["x-roomcast-node"].is_string());
    // Its info shows in presence.
    c.request(join_watching(2, "lobby")).await;
    let ServerFrame::Presence { members, .. } = c
        .request(ClientFrame::Presence {
            id: Some(3),
            room: "lobby".into(),
        })
        .await
    else {
        panic!("presence expected")
    };
    assert_eq!(members[0].user, "alice");
    assert_eq!(members[0].info, Some(json!({"via": "backend"})));

    // `{"result": {}}` keeps the node's own (anonymous) identity.
    let (_anon, first) = hello(&gw, None).await;
    let ServerFrame::Welcome { user, .. } = first else {
        panic!("welcome expected, got {first:?}")
    };
    assert!(user.starts_with("anon-"), "{user}");

    // Refused with the backend's code and reason.
    let (mut banned, first) = hello(&gw, Some("deny:banned for spam")).await;
    assert_eq!(
        error_of(&first),
        (ErrorCode::Forbidden, "banned for spam".to_string())
    );
    assert_eq!(banned.expect_close().await, 4403);
    let (mut unknown, first) = hello(&gw, Some("unauth")).await;
    assert_eq!(error_of(&first).0, ErrorCode::Unauthorized);
    assert_eq!(unknown.expect_close().await, 4401);

    assert_eq!(
        metric(
            &gw,
            "roomcast_proxy_calls_total{call=\"connect\",result=\"deny\"}"
        ),
        2
    );
    assert_eq!(
        metric(
            &gw,
            "roomcast_proxy_calls_total{call=\"connect\",result=\"allow\"}"
        ),
        2
    );
}

#[tokio::test]
async fn connect_proxy_timeout_fails_closed_or_open_as_configured() {
    let backend = HookBackend::start("unused", SLOW_S);
    let config = |fail_open: bool| {
        format!(
            "[proxy.connect]\nurl = \"{}\"\ntimeout_ms = 300\nfail_open = {fail_open}\n",
            backend.url("/connect")
        )
    };
    let (closed, _f1) = start("fail-closed", &config(false));
    let (open, _f2) = start("fail-open", &config(true));

    let started = std::time::Instant::now();
    let (mut c, first) = hello(&closed, Some("slow")).await;
    assert_eq!(error_of(&first).0, ErrorCode::Unavailable);
    assert_eq!(c.expect_close().await, 1013);
    assert!(
        started.elapsed() < Duration::from_millis(2_500),
        "the deadline was not kept: {:?}",
        started.elapsed()
    );

    let (_c, first) = hello(&open, Some("slow")).await;
    assert!(
        matches!(first, ServerFrame::Welcome { .. }),
        "fail-open must connect: {first:?}"
    );

    // A backend that is not there at all: the same two answers.
    let gone = format!("http://127.0.0.1:{}/connect", roomcast_testkit::free_port());
    let (closed_gone, _f3) = start(
        "gone",
        &format!("[proxy.connect]\nurl = \"{gone}\"\ntimeout_ms = 500\n"),
    );
    let (mut c, first) = hello(&closed_gone, None).await;
    assert_eq!(error_of(&first).0, ErrorCode::Unavailable);
    assert_eq!(c.expect_close().await, 1013);
    assert!(
        metric(
            &closed,
            "roomcast_proxy_calls_total{call=\"connect\",result=\"failure\"}"
        ) >= 1
    );
}

#[tokio::test]
async fn join_proxy_allows_denies_times_out_and_namespaces_override() {
    let backend = HookBackend::start("unused", SLOW_S);
    let config = strict_and_lenient("join", &backend.url("/join"))
        + "[proxy.namespaces.open.join]\nurl = \"\"\n";
    let (gw, _file) = start("join", &config);
    let (mut c, _) = RawClient::ready(&gw.ws_url(), Codec::Json).await;

    let joined = c.request(join(1, "chat:general")).await;
    assert!(matches!(joined, ServerFrame::Joined { .. }), "{joined:?}");
    let call = backend.calls("join").pop().unwrap();
    assert_eq!(call["body"]["room"], "chat:general");
    assert!(call["body"]["session"].is_string());
    assert!(call["body"]["user"].as_str().unwrap().starts_with("anon-"));

    let denied = c.request(join(2, "chat:forbidden")).await;
    assert_eq!(
        error_of(&denied),
        (
            ErrorCode::Forbidden,
            "no entry to chat:forbidden".to_string()
        )
    );
    let slow = c.request(join(3, "chat:slow")).await;
    assert_eq!(error_of(&slow).0, ErrorCode::Unavailable);

    // `open:*` is not proxied; `lenient:*` fails open.
    let before = backend.calls("join").len();
    let open = c.request(join(4, "open:forbidden")).await;
    assert!(matches!(open, ServerFrame::Joined { .. }), "{open:?}");
    assert_eq!(backend.calls("join").len(), before, "open:* was proxied");
    let lenient = c.request(join(5, "lenient:slow")).await;
    assert!(matches!(lenient, ServerFrame::Joined { .. }), "{lenient:?}");

    // The connection is still fine, and a refused room was not joined.
    let not_joined = c.request(publish(6, "chat:forbidden", json!(1))).await;
    assert_eq!(error_of(&not_joined).0, ErrorCode::NotJoined);
}

#[tokio::test]
async fn publish_proxy_transforms_denies_and_fails_as_configured() {
    let backend = HookBackend::start("unused", SLOW_S);
    let config = strict_and_lenient("publish", &backend.url("/publish"));
    let (gw, _file) = start("publish", &config);
    let (mut a, _) = RawClient::ready(&gw.ws_url(), Codec::Json).await;
    let (mut b, _) = RawClient::ready(&gw.ws_url(), Codec::MsgPack).await;
    for c in [&mut a, &mut b] {
        c.request(join(1, "game:1")).await;
        c.request(join(2, "game:slow")).await;
        c.request(join(3, "lenient:slow")).await;
    }

    // Replaced data is what is stored and fanned out.
    let ack = a
        .request(publish(10, "game:1", json!({"shout": "hello"})))
        .await;
    assert_eq!(ack_offset(&ack), Some(1), "{ack:?}");
    let moderated = json!({"shout": "HELLO", "moderated": true});
    let got = b.next_message("game:1").await;
    assert_eq!(got, (moderated.clone(), 1));
    let call = backend.calls("publish").pop().unwrap();
    assert_eq!(call["body"]["data"], json!({"shout": "hello"}));
    assert_eq!(call["body"]["room"], "game:1");

    // Denied: an error, nothing stored (the next message gets offset 2).
    let denied = a
        .request(publish(11, "game:1", json!({"deny": "illegal move"})))
        .await;
    assert_eq!(
        error_of(&denied),
        (ErrorCode::Forbidden, "illegal move".to_string())
    );
    let ack = a.request(publish(12, "game:1", json!("plain"))).await;
    assert_eq!(ack_offset(&ack), Some(2), "{ack:?}");
    let got = b.next_message("game:1").await;
    assert_eq!(got, (json!("plain"), 2), "a denied message was delivered");

    // Timeout: refused (fail closed) or published unchanged (fail open).
    let refused = a.request(publish(13, "game:slow", json!("x"))).await;
    assert_eq!(error_of(&refused).0, ErrorCode::Unavailable);
    let ack = a.request(publish(14, "lenient:slow", json!("y"))).await;
    assert_eq!(ack_offset(&ack), Some(1), "{ack:?}");
    let (got, _) = b.next_message("lenient").await;
    assert_eq!(got, json!("y"));

    // Publishes through the HTTP API are the backend's own: not proxied.
    let before = backend.calls("publish").len();
    let (status, _) = http_request(
        gw.addr,
        "POST",
        "/api/publish",
        &[("Authorization", "Bearer test-key")],
        &json!({"room": "game:1", "data": {"deny": "x"}}).to_string(),
    )
    .unwrap();
    assert_eq!(status, 200);
    assert_eq!(backend.calls("publish").len(), before);
}

#[tokio::test]
async fn rpc_frames_reach_the_backend_and_its_answer_comes_back() {
    let backend = HookBackend::start("unused", SLOW_S);
    let (gw, _file) = start(
        "rpc",
        &format!(
            r#"
[proxy.rpc]
url = "{rpc}"
timeout_ms = 300
[proxy.namespaces.internal.rpc]
url = ""
"#,
            rpc = backend.url("/rpc")
        ),
    );
    let (mut c, _) = RawClient::ready(&gw.ws_url(), Codec::Json).await;
    let rpc = |id, method: &str, data: Value| ClientFrame::Rpc {
        id: Some(id),
        method: method.into(),
        data,
    };
    let echo = c.request(rpc(1, "echo", json!({"k": [1, 2]}))).await;
    assert_eq!(
        echo,
        ServerFrame::RpcResult {
            id: Some(1),
            data: json!({"k": [1, 2]})
        }
    );
    let sum = c
        .request(rpc(2, "math:add", json!({"a": 2, "b": 40})))
        .await;
    assert_eq!(
        sum,
        ServerFrame::RpcResult {
            id: Some(2),
            data: json!(42)
        }
    );
    let failed = c.request(rpc(3, "fail", Value::Null)).await;
    assert_eq!(
        error_of(&failed),
        (
            ErrorCode::BadRequest,
            "this method always fails".to_string()
        )
    );
    let slow = c.request(rpc(4, "slow", Value::Null)).await;
    assert_eq!(error_of(&slow).0, ErrorCode::Unavailable);
    let none = c.request(rpc(5, "internal:echo", Value::Null)).await;
    assert_eq!(error_of(&none).0, ErrorCode::BadRequest);
    let empty = c.request(rpc(6, "", Value::Null)).await;
    assert_eq!(error_of(&empty).0, ErrorCode::BadRequest);
    let call = backend
        .calls("rpc")
        .into_iter()
        .find(|c| c["body"]["method"] == "math:add")
        .unwrap();
    assert_eq!(call["body"]["data"], json!({"a": 2, "b": 40}));
    // Still connected after all of that.
    assert!(matches!(
        c.request(ClientFrame::Ping { id: Some(9) }).await,
        ServerFrame::Pong { .. }
    ));
}

/// A node whose rpc proxy waits long enough for the backend's slow answer
/// (`SLOW_S`), with `extra` configuration before it.
fn start_with_slow_rpc(name: &str, extra: &str) -> (HookBackend, Gateway, PathBuf) {
    let backend = HookBackend::start("unused", SLOW_S);
    let toml = format!(
        "{extra}[proxy.rpc]\nurl = \"{}\"\ntimeout_ms = 6000\n",
        backend.url("/rpc")
    );
    let (gw, file) = start(name, &toml);
    (backend, gw, file)
}

/// An rpc the example backend answers after `SLOW_S`.
fn slow_rpc(id: u64) -> ClientFrame {
    ClientFrame::Rpc {
        id: Some(id),
        method: "slow".into(),
        data: Value::Null,
    }
}

/// A command that takes seconds (an rpc the backend answers after 3 s)
/// holds neither the connection's heartbeat nor its room messages: pongs
/// are read meanwhile (this heartbeat closes a connection whose pong is
/// 1 s late), room messages published meanwhile arrive before the rpc's
/// answer, and the frames the client sent behind the rpc are answered
/// after it, in the order sent.
#[tokio::test]
async fn a_slow_rpc_holds_neither_the_heartbeat_nor_room_messages() {
    let (_backend, gw, _file) = start_with_slow_rpc(
        "slow-rpc",
        "[heartbeat]\nping_interval_ms = 200\npong_timeout_ms = 1000\n\
         [websocket]\ndirect_writes = false\n",
    );
    let (mut c, _) = RawClient::ready(&gw.ws_url(), Codec::Json).await;
    assert!(matches!(
        c.request(join(2, "lobby")).await,
        ServerFrame::Joined { .. }
    ));
    let started = std::time::Instant::now();
    c.send(&slow_rpc(3)).await;
    c.send(&ClientFrame::Ping { id: Some(4) }).await;
    c.send(&publish(5, "lobby", json!("sent behind the rpc")))
        .await;
    let addr = gw.addr;
    let published = tokio::task::spawn_blocking(move || {
        std::thread::sleep(Duration::from_millis(300));
        for n in 0..3 {
            let body = json!({"room": "lobby", "data": {"n": n}}).to_string();
            let (status, answer) = http_request(
                addr,
                "POST",
                "/api/publish",
                &[("Authorization", "Bearer test-key")],
                &body,
            )
            .unwrap();
            assert_eq!(status, 200, "{answer}");
        }
    });
    // (when it arrived, what it was)
    let mut seen: Vec<(Duration, String)> = Vec::new();
    while !seen.iter().any(|(_, what)| what == "ack 5") {
        match c.next_event().await {
            Event::Frame(ServerFrame::Message { data, .. }) => {
                seen.push((started.elapsed(), format!("message {data}")))
            }
            Event::Frame(frame) => {
                let id = frame
                    .reply_id()
                    .map_or("-".to_string(), |id| id.to_string());
                seen.push((started.elapsed(), format!("{} {id}", frame.kind())));
            }
            Event::Closed(code) => panic!("closed with {code} during the rpc; got {seen:?}"),
        }
    }
    published.await.unwrap();
    let at = |what: &str| {
        seen.iter()
            .position(|(_, w)| w == what)
            .unwrap_or_else(|| panic!("no {what} in {seen:?}"))
    };
    let rpc = at("rpc_result 3");
    assert!(
        seen[rpc].0 >= Duration::from_secs_f64(SLOW_S - 0.2),
        "{seen:?}"
    );
    for n in 0..3 {
        let message = at(&format!("message {{\"n\":{n}}}"));
        assert!(
            message < rpc,
            "published during the rpc, arrived after its answer: {seen:?}"
        );
        assert!(seen[message].0 < Duration::from_secs(2), "{seen:?}");
    }
    // The replies, in the order of the frames they answer.
    assert!(rpc < at("pong 4") && at("pong 4") < at("ack 5"), "{seen:?}");
    assert!(at("message \"sent behind the rpc\"") > rpc, "{seen:?}");
    assert!(c.pings >= 5, "{} pings during 3 s", c.pings);
    assert!(matches!(
        c.request(ClientFrame::Ping { id: Some(6) }).await,
        ServerFrame::Pong { .. }
    ));
}

/// The rate limit counts frames when they arrive, not when their turn
/// comes: pings sent at 3 a second behind a 3 s rpc (limit 5 a second,
/// burst 2) are all answered after it, although they are then handled
/// back to back.
#[tokio::test]
async fn frames_waiting_behind_a_slow_rpc_are_rate_limited_by_their_arrival() {
    let (_backend, gw, _file) = start_with_slow_rpc(
        "slow-rpc-rate",
        "[limits]\nmessages_per_second = 5\nmessage_burst = 2\n",
    );
    let (mut c, _) = RawClient::ready(&gw.ws_url(), Codec::Json).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.send(&slow_rpc(1)).await;
    for id in 2..=5 {
        tokio::time::sleep(Duration::from_millis(330)).await;
        c.send(&ClientFrame::Ping { id: Some(id) }).await;
    }
    let mut replies = Vec::new();
    while replies.len() < 5 {
        let frame = c.recv().await;
        replies.push(format!(
            "{} {}",
            frame.kind(),
            frame.reply_id().unwrap_or(0)
        ));
    }
    assert_eq!(
        replies,
        ["rpc_result 1", "pong 2", "pong 3", "pong 4", "pong 5"]
    );
}

/// The message rate limit changes on live connections when the file
/// changes; an invalid file is refused and the old configuration stays.
#[tokio::test]
async fn reload_changes_the_rate_limit_live_and_refuses_an_invalid_file() {
    let generous =
        "[limits]\nmessages_per_second = 1000\nmessage_burst = 1000\nrate_limit_strikes = 1000\n";
    let (mut gw, file) = start("reload", generous);
    let (mut c, _) = RawClient::ready(&gw.ws_url(), Codec::Json).await;

    async fn limited_of(c: &mut RawClient, n: u64, first_id: u64) -> usize {
        for i in 0..n {
            c.send(&ClientFrame::Ping {
                id: Some(first_id + i),
            })
            .await;
        }
        let mut limited = 0;
        for _ in 0..n {
            match c.next_event().await {
                Event::Frame(ServerFrame::Error { code, .. }) => {
                    assert_eq!(code, ErrorCode::RateLimited);
                    limited += 1
                }
                Event::Frame(ServerFrame::Pong { .. }) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        limited
    }
    assert_eq!(limited_of(&mut c, 30, 100).await, 0);

    // A stricter limit, picked up from the file change alone.
    std::fs::write(
        &file,
        "[limits]\nmessages_per_second = 1\nmessage_burst = 5\nrate_limit_strikes = 1000\n",
    )
    .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || gw
            .process
            .output()
            .contains("configuration reloaded")),
        "no reload:\n{}",
        gw.process.output()
    );
    let limited = limited_of(&mut c, 30, 200).await;
    assert!(limited >= 20, "only {limited} of 30 frames were limited");

    // An invalid file (SIGHUP this time): refused, naming the key.
    std::fs::write(&file, "[limits]\nmessages_per_second = 0\n").unwrap();
    gw.process.signal("HUP");
    assert!(
        wait_until(Duration::from_secs(10), || gw.process.output().contains(
            "configuration reload refused: limits.messages_per_second must be greater than 0"
        )),
        "no refusal:\n{}",
        gw.process.output()
    );
    assert!(gw.process.is_running());
    // Still the 1/s limit, on the same connection (never disconnected)...
    tokio::time::sleep(Duration::from_secs(2)).await;
    let limited = limited_of(&mut c, 30, 300).await;
    assert!(limited >= 20, "the old limit was not kept: {limited}");
    // ...and new connections are served.
    let (mut fresh, _) = RawClient::ready(&gw.ws_url(), Codec::Json).await;
    assert!(matches!(
        fresh.request(ClientFrame::Ping { id: Some(1) }).await,
        ServerFrame::Pong { .. }
    ));
    assert!(metric(&gw, "roomcast_config_reloads_total{result=\"applied\"}") >= 1);
    assert!(metric(&gw, "roomcast_config_reloads_total{result=\"refused\"}") >= 1);
    // Nobody was disconnected.
    assert_eq!(metric(&gw, "roomcast_connections "), 2);
}

/// A restart-only key changed in the file is reported and kept.
#[tokio::test]
async fn reload_keeps_restart_only_keys_and_says_so() {
    let (mut gw, file) = start("restart-only", "[history]\nsize = 100\n");
    std::fs::write(&file, "[history]\nsize = 5\n[log]\nlevel = \"debug\"\n").unwrap();
    gw.process.signal("HUP");
    assert!(
        wait_until(Duration::from_secs(10), || gw
            .process
            .output()
            .contains("configuration reloaded")),
        "{}",
        gw.process.output()
    );
    let out = gw.process.output();
    assert!(
        out.contains("configuration change needs a restart") && out.contains("history.size"),
        "{out}"
    );
    assert!(gw.process.is_running());
}

/// Proxy endpoints change live too: a join proxy added to the file applies
/// to the next join of a connection that was already open.
#[tokio::test]
async fn reload_adds_a_proxy_endpoint_to_live_connections() {
    let backend = HookBackend::start("unused", SLOW_S);
    let (gw, file) = start("reload-proxy", "[limits]\nmessages_per_second = 100\n");
    let (mut c, _) = RawClient::ready(&gw.ws_url(), Codec::Json).await;
    let before = c.request(join(1, "chat:forbidden")).await;
    assert!(matches!(before, ServerFrame::Joined { .. }), "{before:?}");
    std::fs::write(
        &file,
        format!("[proxy.join]\nurl = \"{}\"\n", backend.url("/join")),
    )
    .unwrap();
    assert!(wait_until(Duration::from_secs(10), || gw
        .process
        .output()
        .contains("configuration reloaded")));
    let after = c.request(join(2, "chat:forbidden-too")).await;
    assert_eq!(error_of(&after).0, ErrorCode::Forbidden);
    assert_eq!(backend.calls("join").len(), 1);
}

/// With tracing on, proxy calls carry the W3C trace context of the command.
#[tokio::test]
async fn proxy_calls_carry_the_trace_context() {
    let backend = HookBackend::start("unused", SLOW_S);
    // Spans are exported to a port nobody listens on: export fails quietly,
    // the context still propagates.
    let path = config_file(
        "trace",
        &format!("[proxy.join]\nurl = \"{}\"\n", backend.url("/join")),
    );
    let collector = format!("http://127.0.0.1:{}", roomcast_testkit::free_port());
    let gw = Gateway::start(&[
        ("ROOMCAST_CONFIG", path.to_str().unwrap()),
        ("ROOMCAST_TRACING__ENABLED", "true"),
        ("ROOMCAST_TRACING__PROTOCOL", "http/protobuf"),
        ("ROOMCAST_TRACING__ENDPOINT", collector.as_str()),
    ]);
    let (mut c, _) = RawClient::ready(&gw.ws_url(), Codec::Json).await;
    c.request(join(1, "traced")).await;
    let call = backend.calls("join").pop().unwrap();
    let tp = call["headers"]["traceparent"]
        .as_str()
        .unwrap_or_else(|| panic!("no traceparent: {call}"));
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    assert_eq!(
        (parts[0], parts[1].len(), parts[2].len()),
        ("00", 32, 16),
        "{tp}"
    );
    assert_ne!(parts[1], "0".repeat(32));
}

/// A single node without a presence service sends its own webhooks.
#[tokio::test]
async fn a_single_node_sends_signed_webhooks() {
    let backend = HookBackend::start("hook-secret", SLOW_S);
    let (gw, _file) = start(
        "webhooks",
        &format!(
            "[webhooks]\nurl = \"{}\"\nsecret = \"hook-secret\"\nbatch_delay_ms = 50\n[session]\nttl_ms = 300\n",
            backend.url("/webhook")
        ),
    );
    let (mut a, welcome) = RawClient::ready(&gw.ws_url(), Codec::Json).await;
    let ServerFrame::Welcome { session, .. } = welcome else {
        unreachable!()
    };
    a.request(join(1, "chat:hooks")).await;
    a.request(ClientFrame::Leave {
        id: Some(2),
        room: "chat:hooks".into(),
    })
    .await;
    a.request(join(3, "chat:hooks")).await;
    drop(a); // gone: leave, vacated; the parked session expires: session_end

    let wanted = [
        "room_occupied",
        "presence_join",
        "presence_leave",
        "room_vacated",
        "room_occupied",
        "presence_join",
        "presence_leave",
        "room_vacated",
        "session_end",
    ];
    let ok = wait_until(Duration::from_secs(10), || {
        backend.get("/webhooks")["events"]
            .as_array()
            .is_some_and(|e| e.len() >= wanted.len())
    });
    let got = backend.get("/webhooks");
    assert!(ok, "{got}");
    let events = got["events"].as_array().unwrap();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, wanted, "{got}");
    assert_eq!(got["rejected"], 0);
    assert!(events
        .iter()
        .all(|e| e["session"].is_null() || e["session"] == session.as_str()));
    assert_eq!(events[8]["reason"], "closed");
}

//! Namespaces (PROTOCOL.md, Additions 2026-12): `namespaces.<ns>.*`
//! overrides per room namespace, in the embedded engine and against a real
//! Redis, applied again by a live reload, and refused at startup when a key
//! is wrong.

use std::time::Duration;

use roomcast_protocol::{ClientFrame, Codec, ErrorCode, ServerFrame};
use roomcast_testkit::redis::RedisServer;
use roomcast_testkit::ws::{join, join_watching, publish, RawClient};
use roomcast_testkit::{binary, http_request, wait_until, Gateway, Process};
use serde_json::{json, Value};

const KEY: (&str, &str) = ("Authorization", "Bearer test-key");

fn api_publish(gw: &Gateway, room: &str, n: u64) {
    let body = json!({"room": room, "data": {"n": n}}).to_string();
    let (status, text) = http_request(
        gw.addr,
        "POST",
        "/api/publish",
        &[KEY, ("Content-Type", "application/json")],
        &body,
    )
    .unwrap();
    assert_eq!(status, 200, "{text}");
}

fn history_len(gw: &Gateway, room: &str) -> usize {
    let (status, text) =
        http_request(gw.addr, "GET", &format!("/api/history/{room}"), &[KEY], "").unwrap();
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    v["messages"].as_array().map_or(0, Vec::len)
}

fn forbidden(frame: &ServerFrame) -> bool {
    matches!(
        frame,
        ServerFrame::Error {
            code: ErrorCode::Forbidden,
            ..
        }
    )
}

const RULES: &str = r#"
[namespaces.chat.history]
size = 3

[namespaces.feed]
client_publish = false

[namespaces.lobby]
presence = false

[namespaces.priv]
anonymous = false
"#;

fn config_file(name: &str, text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!(
        "roomcast-ns-{name}-{}-{}.toml",
        std::process::id(),
        roomcast_testkit::free_port()
    ));
    std::fs::write(&path, text).unwrap();
    path
}

async fn check_rules(gw: &Gateway) {
    // History size: 3 in chat:, the default (100) elsewhere.
    for n in 0..5 {
        api_publish(gw, "chat:a", n);
        api_publish(gw, "other:a", n);
    }
    assert_eq!(history_len(gw, "chat:a"), 3);
    assert_eq!(history_len(gw, "other:a"), 5);

    let (mut c, _) = RawClient::ready(&gw.ws_url(), Codec::Json).await;
    // Client publish off in feed: (the API still publishes).
    c.request(join(1, "feed:news")).await;
    let refused = c.request(publish(2, "feed:news", json!({"x": 1}))).await;
    assert!(forbidden(&refused), "{refused:?}");
    api_publish(gw, "feed:news", 1);
    // Presence off in lobby: the query is refused, and no events arrive.
    c.request(join_watching(3, "lobby:main")).await;
    let refused = c
        .request(ClientFrame::Presence {
            id: Some(4),
            room: "lobby:main".into(),
        })
        .await;
    assert!(forbidden(&refused), "{refused:?}");
    let (mut other, _) = RawClient::ready(&gw.ws_url(), Codec::Json).await;
    other.request(join_watching(1, "lobby:main")).await;
    // Presence on elsewhere: the same join does bring an event.
    c.request(join_watching(5, "open:main")).await;
    other.request(join_watching(2, "open:main")).await;
    let first = c
        .recv_until(|f| match f {
            ServerFrame::PresenceJoin { room, .. } => Some(room.clone()),
            _ => None,
        })
        .await;
    assert_eq!(first, "open:main", "a presence event came from lobby:");
    // Anonymous connections may not join priv: rooms.
    let refused = c.request(join(6, "priv:x")).await;
    assert!(forbidden(&refused), "{refused:?}");
}

#[tokio::test]
async fn namespace_options_take_effect_in_the_embedded_engine() {
    let file = config_file("embedded", RULES);
    let gw = Gateway::start(&[("ROOMCAST_CONFIG", file.to_str().unwrap())]);
    check_rules(&gw).await;
}

#[tokio::test]
async fn namespace_options_take_effect_against_redis() {
    let redis = RedisServer::start();
    let file = config_file("redis", RULES);
    let gw = Gateway::start(&[
        ("ROOMCAST_CONFIG", file.to_str().unwrap()),
        ("ROOMCAST_REDIS__URL", &redis.url()),
        ("ROOMCAST_AUTH__RESUME_SECRET", "namespaces-test-secret"),
    ]);
    check_rules(&gw).await;
}

#[tokio::test]
async fn a_live_reload_applies_namespace_changes() {
    let file = config_file("reload", RULES);
    let gw = Gateway::start(&[("ROOMCAST_CONFIG", file.to_str().unwrap())]);
    let (mut c, _) = RawClient::ready(&gw.ws_url(), Codec::Json).await;
    c.request(join(1, "feed:news")).await;
    let refused = c.request(publish(2, "feed:news", json!({"x": 1}))).await;
    assert!(forbidden(&refused), "{refused:?}");

    // feed: opens to clients, chat: keeps 2 messages.
    std::fs::write(
        &file,
        "[namespaces.chat.history]\nsize = 2\n\n[namespaces.feed]\nclient_publish = true\n",
    )
    .unwrap();
    gw.process.signal("HUP");
    assert!(
        wait_until(Duration::from_secs(10), || gw
            .metric("roomcast_config_reloads_total{result=\"applied\"}")
            >= 1),
        "no reload"
    );
    let ack = c.request(publish(3, "feed:news", json!({"x": 2}))).await;
    assert!(matches!(ack, ServerFrame::Ack { id: 3, .. }), "{ack:?}");
    for n in 0..4 {
        api_publish(&gw, "chat:b", n);
    }
    assert_eq!(history_len(&gw, "chat:b"), 2);

    // A bad namespace key in a reload is refused; the running rules stay.
    std::fs::write(&file, "[namespaces.feed]\nclient_publsh = false\n").unwrap();
    gw.process.signal("HUP");
    assert!(wait_until(Duration::from_secs(10), || gw
        .metric("roomcast_config_reloads_total{result=\"refused\"}")
        >= 1));
    let ack = c.request(publish(4, "feed:news", json!({"x": 3}))).await;
    assert!(matches!(ack, ServerFrame::Ack { id: 4, .. }), "{ack:?}");
}

#[test]
fn a_bad_namespace_key_is_a_startup_error_naming_it() {
    for (var, value, named) in [
        (
            "ROOMCAST_NAMESPACES__CHAT__HISTROY__SIZE",
            "5",
            "namespaces.chat",
        ),
        (
            "ROOMCAST_NAMESPACES__CHAT__HISTORY__SIZE",
            "0",
            "namespaces.chat.history.size",
        ),
        (
            "ROOMCAST_NAMESPACES__CHAT__CLIENT_PUBLISH",
            "maybe",
            "namespaces.chat.client_publish",
        ),
    ] {
        let mut p = Process::spawn(
            "gateway",
            &binary("roomcast-gateway"),
            &[],
            &[
                ("ROOMCAST_LISTEN", "127.0.0.1:0".to_string()),
                (var, value.to_string()),
            ],
        );
        let code = p.wait_exit(Duration::from_secs(20));
        assert!(matches!(code, Some(Some(c)) if c != 0), "{var}: {code:?}");
        let out = p.output();
        assert!(out.contains(named), "{var}: {out}");
    }
}

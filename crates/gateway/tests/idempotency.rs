//! Idempotent publish (PROTOCOL.md, "Additions (2026-12)"): publishes to one
//! room with one key, within the window, are stored and delivered once,
//! whether repeated, concurrent, from two nodes or over the HTTP API; every
//! repeat is acked with the first one's offset and `duplicate: true`; a
//! retry after `unavailable` (the reply lost on a stalled Redis link) never
//! stores a second copy. On Redis and on the embedded engine.

use std::time::Duration;

use roomcast_protocol::{ClientFrame, Codec, ErrorCode, ServerFrame};
use roomcast_testkit::proxy::TcpProxy;
use roomcast_testkit::redis::RedisServer;
use roomcast_testkit::ws::{join, Event, RawClient};
use roomcast_testkit::{http_request, Gateway};
use serde_json::json;

const API_KEY: &str = "idempotency-test-api-key";

fn node(redis_url: Option<&str>, id: &str) -> Gateway {
    let mut env = vec![
        ("ROOMCAST_NODE__ID", id),
        ("ROOMCAST_API__KEY", API_KEY),
        ("ROOMCAST_AUTH__RESUME_SECRET", "idempotency"),
        ("ROOMCAST_LIMITS__MESSAGES_PER_SECOND", "10000"),
        ("ROOMCAST_LIMITS__MESSAGE_BURST", "10000"),
        ("ROOMCAST_REDIS__COMMAND_TIMEOUT_MS", "500"),
    ];
    if let Some(url) = redis_url {
        env.push(("ROOMCAST_REDIS__URL", url));
    }
    Gateway::start(&env)
}

fn keyed(id: u64, room: &str, data: serde_json::Value, key: &str) -> ClientFrame {
    ClientFrame::Publish {
        id: Some(id),
        room: room.into(),
        data,
        key: Some(key.into()),
    }
}

/// The ack's offset and duplicate mark; fails on anything else.
fn ack(frame: &ServerFrame) -> (u64, bool) {
    match frame {
        ServerFrame::Ack {
            offset: Some(offset),
            duplicate,
            ..
        } => (*offset, *duplicate),
        other => panic!("expected an ack with an offset: {other:?}"),
    }
}

/// Every message of `room` that `member` receives within `quiet` of the
/// last one.
async fn drain_messages(
    member: &mut RawClient,
    room: &str,
    quiet: Duration,
) -> Vec<(u64, serde_json::Value)> {
    let mut seen = Vec::new();
    while let Some(event) = member.next_event_within(quiet).await {
        match event {
            Event::Frame(ServerFrame::Message {
                room: r,
                offset,
                data,
                ..
            }) if r == room => seen.push((offset, data)),
            Event::Frame(_) => {}
            Event::Closed(code) => panic!("member closed with {code}"),
        }
    }
    seen
}

fn http_publish(
    gw: &Gateway,
    room: &str,
    key: Option<&str>,
    data: &str,
) -> (u16, serde_json::Value) {
    let mut headers = vec![("Authorization", format!("Bearer {API_KEY}"))];
    if let Some(key) = key {
        headers.push(("Idempotency-Key", key.to_string()));
    }
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let body = json!({"room": room, "data": data}).to_string();
    let (status, text) = http_request(gw.addr, "POST", "/api/publish", &headers, &body).unwrap();
    (status, serde_json::from_str(&text).unwrap_or(json!(text)))
}

/// Repeated, concurrent, cross-node and HTTP repeats of one key in one room.
async fn stored_and_delivered_once(a: &Gateway, b: &Gateway) {
    let (mut member, _) = RawClient::ready(&b.ws_url(), Codec::Json).await;
    member.request(join(1, "idem")).await;
    member.request(join(2, "other")).await;

    // The same key twice from one connection.
    let (mut p, _) = RawClient::ready(&a.ws_url(), Codec::Json).await;
    p.request(join(1, "idem")).await;
    p.request(join(2, "other")).await;
    let first = ack(&p.request(keyed(10, "idem", json!("once"), "k-twice")).await);
    assert!(!first.1, "the first publish is no duplicate");
    let again = ack(&p
        .request(keyed(11, "idem", json!("twice?"), "k-twice"))
        .await);
    assert_eq!(
        again,
        (first.0, true),
        "a repeat gets the first offset, marked"
    );

    // The same key ten times at once, from ten connections on two nodes.
    let mut tasks = Vec::new();
    for i in 0..10u64 {
        let url = if i % 2 == 0 { a.ws_url() } else { b.ws_url() };
        let codec = if i % 3 == 0 {
            Codec::MsgPack
        } else {
            Codec::Json
        };
        tasks.push(tokio::spawn(async move {
            let (mut c, _) = RawClient::ready(&url, codec).await;
            c.request(join(1, "idem")).await;
            ack(&c
                .request(keyed(20 + i, "idem", json!({"copy": i}), "k-concurrent"))
                .await)
        }));
    }
    let mut acks = Vec::new();
    for t in tasks {
        acks.push(t.await.unwrap());
    }
    let offsets: std::collections::BTreeSet<u64> = acks.iter().map(|a| a.0).collect();
    assert_eq!(
        offsets.len(),
        1,
        "ten concurrent repeats got offsets {acks:?}"
    );
    assert_eq!(
        acks.iter().filter(|a| !a.1).count(),
        1,
        "exactly one is not a duplicate: {acks:?}"
    );

    // The HTTP API, with the header; and the same key in another room.
    let (status, body) = http_publish(a, "idem", Some("k-http"), "over http");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.get("duplicate"), None, "{body}");
    let (status, again) = http_publish(b, "idem", Some("k-http"), "over http again");
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        (
            again["offset"].clone(),
            again["epoch"].clone(),
            again["duplicate"].clone()
        ),
        (body["offset"].clone(), body["epoch"].clone(), json!(true))
    );
    let ws_repeat = ack(&p
        .request(keyed(40, "idem", json!("ws after http"), "k-http"))
        .await);
    assert_eq!(ws_repeat, (body["offset"].as_u64().unwrap(), true));
    let elsewhere = ack(&p
        .request(keyed(41, "other", json!("another room"), "k-http"))
        .await);
    assert!(!elsewhere.1, "the same key in another room is another key");

    // Bad keys are bad requests.
    let bad = p.request(keyed(50, "idem", json!("x"), "has space")).await;
    assert!(
        matches!(
            bad,
            ServerFrame::Error {
                code: ErrorCode::BadRequest,
                ..
            }
        ),
        "{bad:?}"
    );
    let long = "k".repeat(65);
    let bad = p.request(keyed(51, "idem", json!("x"), &long)).await;
    assert!(
        matches!(
            bad,
            ServerFrame::Error {
                code: ErrorCode::BadRequest,
                ..
            }
        ),
        "{bad:?}"
    );
    let (status, _) = http_publish(a, "idem", Some("{braces}"), "x");
    assert_eq!(status, 400);

    // The member saw each publish once: "once", one copy, "over http";
    // and in the other room its one message.
    let seen = drain_messages(&mut member, "idem", Duration::from_millis(1500)).await;
    let in_idem: Vec<u64> = seen.iter().map(|(o, _)| *o).collect();
    // "once", one concurrent copy, "over http".
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(in_idem, [1, 2, 3], "{seen:?}");
    assert_eq!(seen[0].1, json!("once"));
    assert!(seen.iter().any(|(_, d)| *d == json!("over http")));
    assert!(!seen
        .iter()
        .any(|(_, d)| *d == json!("twice?") || *d == json!("over http again")));
    assert_eq!(in_idem.iter().filter(|o| **o == first.0).count(), 1);
    let duplicates = if std::ptr::eq(a, b) {
        a.metric("roomcast_publish_duplicates_total")
    } else {
        a.metric("roomcast_publish_duplicates_total")
            + b.metric("roomcast_publish_duplicates_total")
    };
    // One repeat, nine concurrent copies, two over HTTP and WebSocket.
    assert_eq!(duplicates, 1 + 9 + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_is_stored_once_across_repeats_concurrency_nodes_and_http() {
    let redis = RedisServer::start();
    let a = node(Some(&redis.url()), "node-a");
    let b = node(Some(&redis.url()), "node-b");
    stored_and_delivered_once(&a, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_is_stored_once_on_the_embedded_engine() {
    let a = node(None, "solo");
    stored_and_delivered_once(&a, &a).await;
}

/// The first publish reaches Redis and is stored, but its reply is held on
/// the link: the node answers `unavailable`. The client retries with the
/// same key once the link heals and gets the stored offset, marked
/// duplicate; the member receives the message once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_unavailable_never_stores_twice() {
    let redis = RedisServer::start();
    let upstream = format!("127.0.0.1:{}", redis.port()).parse().unwrap();
    let proxy = TcpProxy::start(upstream).await;
    let a = node(Some(&format!("redis://{}", proxy.addr)), "node-a");
    let b = node(Some(&redis.url()), "node-b");
    let (mut member, _) = RawClient::ready(&b.ws_url(), Codec::Json).await;
    member.request(join(1, "retry")).await;
    let (mut p, _) = RawClient::ready(&a.ws_url(), Codec::Json).await;
    p.request(join(1, "retry")).await;
    // A first keyed publish loads the script on the node's connection, so
    // that the publishes below run it at once (a script not loaded yet
    // would wait for its NOSCRIPT answer, held too, and never run).
    let warm = ack(&p
        .request(keyed(99, "retry", json!("warm-up"), "warm-up"))
        .await);
    assert_eq!(warm, (1, false));

    let mut unavailable = 0;
    let mut acked = Vec::new();
    for round in 0..5u64 {
        let key = format!("retry-{round}");
        proxy.hold_replies();
        let reply = p
            .request(keyed(100 + round, "retry", json!(round), &key))
            .await;
        match reply {
            ServerFrame::Error {
                code: ErrorCode::Unavailable,
                ..
            } => unavailable += 1,
            other => panic!("with replies held the publish must fail: {other:?}"),
        }
        proxy.heal();
        // Retry with the same key until the node answers (its link may be
        // reconnecting).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let reply = p
                .request(keyed(200 + round, "retry", json!(round), &key))
                .await;
            match reply {
                ServerFrame::Ack {
                    offset: Some(offset),
                    duplicate,
                    ..
                } => {
                    acked.push((offset, duplicate));
                    break;
                }
                ServerFrame::Error {
                    code: ErrorCode::Unavailable,
                    ..
                } => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "the link never healed"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => panic!("{other:?}"),
            }
        }
    }
    assert_eq!(unavailable, 5);
    // Each round's first publish was stored before its reply was lost, so
    // every retry was answered as a duplicate of it.
    assert!(
        acked.iter().all(|(_, dup)| *dup),
        "retries stored again: {acked:?}"
    );
    let seen = drain_messages(&mut member, "retry", Duration::from_millis(1500)).await;
    let data: Vec<serde_json::Value> = seen.iter().map(|(_, d)| d.clone()).collect();
    let mut expected = vec![json!("warm-up")];
    expected.extend((0..5u64).map(|r| json!(r)));
    assert_eq!(data, expected, "each message once: {seen:?}");
    let offsets: Vec<u64> = seen.iter().map(|(o, _)| *o).collect();
    assert_eq!(
        offsets[1..],
        acked.iter().map(|(o, _)| *o).collect::<Vec<_>>()
    );
}

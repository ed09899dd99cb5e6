//! Each close code of the contract, provoked over a real socket:
//! 1009, 1012, 1013, 4400, 4408 (hello and heartbeat), 4429.
//! (4401 is in `auth.rs`, 4508 in `slow_consumer.rs`.)

use std::time::Duration;

use roomcast_protocol::{ClientFrame, Codec, ErrorCode, ReconnectReason, ServerFrame};
use roomcast_testkit::stalled::StalledClient;
use roomcast_testkit::ws::{join, Event, RawClient};
use roomcast_testkit::{http_request, http_request_from, Gateway};

#[tokio::test]
async fn a_message_over_the_size_limit_closes_with_1009_and_others_are_unaffected() {
    let gw = Gateway::start(&[("ROOMCAST_LIMITS__MAX_MESSAGE_BYTES", "1024")]);
    let (mut bystander, _) = RawClient::ready(&gw.ws_url(), Codec::Json).await;
    for deflate in [false, true] {
        let mut c = RawClient::connect_with(&gw.ws_url(), Codec::Json, &[], deflate)
            .await
            .unwrap();
        c.hello(None).await;
        // Repetitive text: tiny once compressed, the limit applies inflated.
        let big = format!(r#"{{"type":"ping","pad":"{}"}}"#, "a".repeat(4000));
        c.send_bytes(big).await;
        assert_eq!(c.expect_close().await, 1009, "deflate={deflate}");
    }
    assert_eq!(
        bystander.request(ClientFrame::Ping { id: Some(1) }).await,
        ServerFrame::Pong { id: Some(1) }
    );
}

#[tokio::test]
async fn over_capacity_connections_are_closed_with_1013() {
    let gw = Gateway::start(&[("ROOMCAST_LIMITS__MAX_CONNECTIONS", "1")]);
    let (_first, _) = RawClient::ready(&gw.ws_url(), Codec::Json).await;
    let mut second = RawClient::connect(&gw.ws_url(), Codec::Json).await;
    assert_eq!(second.expect_close().await, 1013);

    // The per-address limit counts sockets from accept (issue #34): the
    // address's third socket is closed at once, before any HTTP, so it
    // never gets to a close code; the metrics are read from another address.
    let gw = Gateway::start(&[("ROOMCAST_LIMITS__MAX_CONNECTIONS_PER_IP", "2")]);
    let (_a, _) = RawClient::ready(&gw.ws_url(), Codec::Json).await;
    let (_b, _) = RawClient::ready(&gw.ws_url(), Codec::Json).await;
    let third = RawClient::connect_with(&gw.ws_url(), Codec::Json, &[], true).await;
    assert!(third.is_err(), "a third socket from one address got in");
    let observer = std::net::IpAddr::from([127, 0, 0, 3]);
    let (_, text) = http_request_from(observer, gw.addr, "GET", "/metrics", &[], "")
        .await
        .unwrap();
    assert!(
        text.contains("roomcast_connections_rejected_total{reason=\"max_connections_per_ip\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("roomcast_accept_refused_total{reason=\"per_ip\"} 1"),
        "{text}"
    );
    // A slot is the socket's until it closes.
    drop(_a);
    assert!(roomcast_testkit::wait_until(Duration::from_secs(5), || {
        std::thread::sleep(Duration::from_millis(50));
        http_request(gw.addr, "GET", "/healthz", &[], "").is_ok_and(|r| r.0 == 200)
    }));
}

#[tokio::test]
async fn a_first_frame_that_is_not_hello_closes_with_4400() {
    let gw = Gateway::start(&[]);
    let mut c = RawClient::connect(&gw.ws_url(), Codec::Json).await;
    c.send(&join(3, "r")).await;
    match c.recv().await {
        ServerFrame::Error {
            id: Some(3),
            code: ErrorCode::BadRequest,
            ..
        } => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(c.expect_close().await, 4400);
}

#[tokio::test]
async fn repeated_malformed_frames_close_with_4400() {
    let gw = Gateway::start(&[("ROOMCAST_LIMITS__MAX_BAD_FRAMES", "3")]);
    let (mut c, _) = RawClient::ready(&gw.ws_url(), Codec::MsgPack).await;
    for _ in 0..4 {
        c.send_bytes(vec![0xc1u8, 0xff]).await;
    }
    let mut errors = 0;
    let code = loop {
        match c.next_event().await {
            Event::Frame(ServerFrame::Error {
                code: ErrorCode::BadRequest,
                ..
            }) => errors += 1,
            Event::Frame(other) => panic!("{other:?}"),
            Event::Closed(code) => break code,
        }
    };
    assert_eq!((errors, code), (4, 4400));
}

#[tokio::test]
async fn no_hello_in_time_closes_with_4408() {
    let gw = Gateway::start(&[("ROOMCAST_HEARTBEAT__HELLO_TIMEOUT_MS", "300")]);
    let mut c = RawClient::connect(&gw.ws_url(), Codec::Json).await;
    assert_eq!(c.expect_close().await, 4408);
}

#[tokio::test]
async fn a_silent_peer_is_closed_with_4408_and_a_live_one_is_kept() {
    let gw = Gateway::start(&[
        ("ROOMCAST_HEARTBEAT__PING_INTERVAL_MS", "400"),
        ("ROOMCAST_HEARTBEAT__PONG_TIMEOUT_MS", "400"),
    ]);
    // A half-open peer: says hello, then never reads (so never answers pings).
    let mut silent = StalledClient::connect(gw.addr, 4096, &[r#"{"type":"hello"}"#]).await;
    // A live peer: its library answers pings while it waits.
    let (mut live, _) = RawClient::ready(&gw.ws_url(), Codec::Json).await;
    assert!(
        live.next_event_within(Duration::from_millis(3000))
            .await
            .is_none(),
        "live peer was closed"
    );
    assert_eq!(
        silent.read_until_close(Duration::from_secs(5)).await,
        Some(4408)
    );
    assert_eq!(
        live.request(ClientFrame::Ping { id: Some(1) }).await,
        ServerFrame::Pong { id: Some(1) }
    );
}

#[tokio::test]
async fn a_flood_gets_rate_limited_then_closed_with_4429() {
    let gw = Gateway::start(&[
        ("ROOMCAST_LIMITS__MESSAGES_PER_SECOND", "5"),
        ("ROOMCAST_LIMITS__MESSAGE_BURST", "5"),
        ("ROOMCAST_LIMITS__RATE_LIMIT_STRIKES", "10"),
    ]);
    let (mut c, _) = RawClient::ready(&gw.ws_url(), Codec::Json).await;
    for i in 0..40 {
        c.send(&ClientFrame::Ping { id: Some(i) }).await;
    }
    let (mut pongs, mut limited) = (0, 0);
    let code = loop {
        match c.next_event().await {
            Event::Frame(ServerFrame::Pong { .. }) => pongs += 1,
            Event::Frame(ServerFrame::Error {
                code: ErrorCode::RateLimited,
                id,
                ..
            }) => {
                assert!(id.is_some(), "the rate_limited error echoes the id");
                limited += 1
            }
            Event::Frame(other) => panic!("{other:?}"),
            Event::Closed(code) => break code,
        }
    };
    assert_eq!(code, 4429);
    assert!(pongs <= 5, "{pongs} pongs");
    assert!(limited >= 10, "{limited} rate_limited errors");
}

#[tokio::test]
async fn sigterm_sends_reconnect_then_1012_refuses_upgrades_and_exits() {
    let mut gw = Gateway::start(&[
        ("ROOMCAST_DRAIN__WINDOW_MS", "1500"),
        ("ROOMCAST_DRAIN__TIMEOUT_MS", "5000"),
    ]);
    let mut clients = Vec::new();
    for _ in 0..20 {
        let (mut c, _) = RawClient::ready(&gw.ws_url(), Codec::Json).await;
        c.request(join(1, "d")).await;
        clients.push(c);
    }
    gw.process.signal("TERM");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        http_request(gw.addr, "GET", "/readyz", &[], "").unwrap().0,
        503
    );
    let refused = RawClient::connect_with(&gw.ws_url(), Codec::Json, &[], false).await;
    assert!(refused.is_err(), "upgrade accepted while draining");
    for mut c in clients {
        match c.recv().await {
            ServerFrame::Reconnect {
                reason: ReconnectReason::Shutdown,
                after_ms,
            } => assert!(after_ms <= 1000),
            other => panic!("{other:?}"),
        }
        assert_eq!(c.expect_close().await, 1012);
    }
    assert!(
        gw.process.wait_exit(Duration::from_secs(6)).is_some(),
        "node did not exit"
    );
}

//! Hostile input, each answered as documented while the node keeps serving
//! others: broken WebSocket framing, invalid UTF-8, oversized control
//! frames, fragmentation abuse, foreign origins, API key guessing.

use std::time::Duration;

use roomcast_protocol::{ClientFrame, Codec, ServerFrame};
use roomcast_testkit::stalled::{masked_frame, StalledClient};
use roomcast_testkit::ws::RawClient;
use roomcast_testkit::{http_request, Gateway};

const HELLO: &str = r#"{"type":"hello"}"#;

async fn still_serving(gw: &Gateway) {
    let (mut c, _) = RawClient::ready(&gw.ws_url(), Codec::Json).await;
    assert_eq!(
        c.request(ClientFrame::Ping { id: Some(1) }).await,
        ServerFrame::Pong { id: Some(1) }
    );
}

async fn close_code_after(gw: &Gateway, frames: &[Vec<u8>]) -> Option<u16> {
    let mut c = StalledClient::connect(gw.addr, 1 << 20, &[HELLO]).await;
    for frame in frames {
        c.send_raw(frame).await;
    }
    c.read_until_close(Duration::from_secs(5)).await
}

#[tokio::test]
async fn broken_framing_and_bad_text_get_their_close_codes() {
    let gw = Gateway::start(&[("ROOMCAST_LIMITS__MAX_MESSAGE_BYTES", "4096")]);
    // Invalid UTF-8 in a text frame.
    assert_eq!(
        close_code_after(&gw, &[masked_frame(0x81, &[0x7b, 0xff, 0xfe, 0x7d])]).await,
        Some(1007)
    );
    // A ping with more than 125 bytes of payload.
    assert_eq!(
        close_code_after(&gw, &[masked_frame(0x89, &[0u8; 200])]).await,
        Some(1002)
    );
    // A continuation frame with no message started.
    assert_eq!(
        close_code_after(&gw, &[masked_frame(0x80, b"orphan")]).await,
        Some(1002)
    );
    // A new data frame while a fragmented message is still open.
    let first = masked_frame(0x01, br#"{"type":"pi"#);
    let interleaved = masked_frame(0x81, br#"{"type":"ping"}"#);
    assert_eq!(
        close_code_after(&gw, &[first, interleaved]).await,
        Some(1002)
    );
    // Fragments that add up to more than the message limit.
    let mut frames = vec![masked_frame(0x01, &[b' '; 1024])];
    frames.extend((0..8).map(|_| masked_frame(0x00, &[b' '; 1024])));
    assert_eq!(close_code_after(&gw, &frames).await, Some(1009));
    still_serving(&gw).await;
}

#[tokio::test]
async fn upgrades_from_origins_off_the_allow_list_are_refused_with_403() {
    let gw = Gateway::start(&[(
        "ROOMCAST_WEBSOCKET__ALLOWED_ORIGINS",
        r#"["https://app.example"]"#,
    )]);
    let upgrade = |origin: &'static str| {
        let addr = gw.addr;
        async move {
            let headers = [
                ("Upgrade", "websocket"),
                ("Connection", "Upgrade"),
                ("Sec-WebSocket-Key", "cm9vbWNhc3QtdGVzdC1rZXk="),
                ("Sec-WebSocket-Version", "13"),
                ("Origin", origin),
            ];
            tokio::task::spawn_blocking(move || {
                http_request(addr, "GET", "/ws", &headers, "").map(|r| r.0)
            })
            .await
            .unwrap()
        }
    };
    assert_eq!(upgrade("https://evil.example").await.unwrap(), 403);
    let allowed = RawClient::connect_with(
        &gw.ws_url(),
        Codec::Json,
        &[("Origin", "https://app.example")],
        true,
    )
    .await;
    assert!(allowed.is_ok(), "allowed origin refused");
    let (_, metrics) = http_request(gw.addr, "GET", "/metrics", &[], "").unwrap();
    assert!(
        metrics.contains("roomcast_connections_rejected_total{reason=\"origin\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn repeated_wrong_api_keys_are_rate_limited() {
    let gw = Gateway::start(&[("ROOMCAST_API__MAX_KEY_FAILURES_PER_MINUTE", "5")]);
    let mut statuses = Vec::new();
    for i in 0..8 {
        let key = format!("Bearer guess-{i}");
        statuses.push(
            http_request(gw.addr, "GET", "/api/stats", &[("Authorization", &key)], "")
                .unwrap()
                .0,
        );
    }
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429, 429, 429]);
    // WebSocket clients are unaffected.
    still_serving(&gw).await;
}

#[tokio::test]
async fn room_names_with_path_or_glob_tricks_are_bad_requests() {
    let gw = Gateway::start(&[]);
    let (mut c, _) = RawClient::ready(&gw.ws_url(), Codec::Json).await;
    for (i, room) in [
        "../admin", "a/b", "*", "room?", "[abc]", "a b", "%2e%2e", "{tag}", "é", "",
    ]
    .iter()
    .enumerate()
    {
        let reply = c
            .request(ClientFrame::Join {
                id: Some(i as u64 + 1),
                room: room.to_string(),
                since: None,
                presence: None,
            })
            .await;
        assert!(
            matches!(
                reply,
                ServerFrame::Error {
                    code: roomcast_protocol::ErrorCode::BadRequest,
                    ..
                }
            ),
            "{room:?}: {reply:?}"
        );
    }
    for path in ["/api/presence/..%2Fadmin", "/api/presence/a*"] {
        let (status, _) = http_request(
            gw.addr,
            "GET",
            path,
            &[("Authorization", "Bearer test-key")],
            "",
        )
        .unwrap();
        assert_eq!(status, 400, "{path}");
    }
}

//! The echo endpoint of `websocket.echo_path` (issue #35): messages come
//! back as they went, through the node's own connection code (its limits
//! included), while `/ws` keeps speaking the protocol; a bad path stops
//! startup.

use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use roomcast_protocol::{ClientFrame, Codec, ServerFrame};
use roomcast_testkit::ws::RawClient;
use roomcast_testkit::{binary, Gateway, Process};
use tokio::net::TcpStream;
use yawc::{Frame, OpCode, Options, WebSocket};

type Client = WebSocket<yawc::MaybeTlsStream<TcpStream>>;

fn echo_node(max_message_bytes: &str) -> Gateway {
    Gateway::start(&[
        ("ROOMCAST_WEBSOCKET__ECHO_PATH", "/echo"),
        ("ROOMCAST_LIMITS__MAX_MESSAGE_BYTES", max_message_bytes),
        // Messages of 64 bytes and more are compressed when deflate is on.
        ("ROOMCAST_WEBSOCKET__COMPRESSION_THRESHOLD", "64"),
    ])
}

async fn connect(url: &str, deflate: bool) -> Client {
    let options = Options::default().with_max_payload_read(1 << 20);
    let options = if deflate {
        options
            .with_low_latency_compression()
            .client_no_context_takeover()
            .server_no_context_takeover()
    } else {
        options.without_compression()
    };
    WebSocket::connect(url.parse().unwrap())
        .with_options(options)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"))
}

/// The next text, binary or close frame, within 10 s.
async fn next(ws: &mut Client) -> Frame {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("nothing received in time")
            .expect("the socket ended without a close frame");
        if matches!(
            frame.opcode(),
            OpCode::Text | OpCode::Binary | OpCode::Close
        ) {
            return frame;
        }
    }
}

#[tokio::test]
async fn text_comes_back_as_text_and_binary_as_binary_and_ws_still_speaks_the_protocol() {
    let gw = echo_node("65536");
    let url = format!("ws://{}/echo", gw.addr);
    let log = gw.process.output();
    assert!(
        log.contains("websocket.echo_path is set"),
        "no startup warning:\n{log}"
    );
    let binary_payload: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    let messages = [
        Frame::text("héllo"),
        Frame::binary(Bytes::from_static(&[0, 159, 146, 150, 255])),
        // Long enough to be queued (and compressed, with deflate).
        Frame::text("roomcast ".repeat(2000)),
        Frame::binary(binary_payload.clone()),
        Frame::text(""),
    ];
    for deflate in [false, true] {
        let mut ws = connect(&url, deflate).await;
        for sent in &messages {
            ws.send(sent.clone()).await.unwrap();
            let got = next(&mut ws).await;
            assert_eq!(got.opcode(), sent.opcode(), "deflate={deflate}");
            assert_eq!(got.payload(), sent.payload(), "deflate={deflate}");
        }
        // Sent back to back: they come back in order.
        for i in 0..50 {
            ws.feed(Frame::text(format!("m{i}"))).await.unwrap();
        }
        ws.flush().await.unwrap();
        for i in 0..50 {
            let got = next(&mut ws).await;
            assert_eq!(got.payload().as_ref(), format!("m{i}").as_bytes());
        }
    }
    // The node's own endpoint is unchanged beside it.
    let (mut client, _) = RawClient::ready(&gw.ws_url(), Codec::Json).await;
    assert_eq!(
        client.request(ClientFrame::Ping { id: Some(7) }).await,
        ServerFrame::Pong { id: Some(7) }
    );
    // The echo connections were counted, and are gone.
    assert!(roomcast_testkit::wait_until(Duration::from_secs(5), || gw
        .metric("roomcast_connections ")
        == 1));
}

#[tokio::test]
async fn an_echoed_message_over_the_size_limit_closes_with_1009() {
    let gw = echo_node("1024");
    let url = format!("ws://{}/echo", gw.addr);
    for deflate in [false, true] {
        let mut ws = connect(&url, deflate).await;
        ws.send(Frame::binary(vec![7u8; 1024])).await.unwrap();
        assert_eq!(next(&mut ws).await.payload().len(), 1024);
        // Repetitive: tiny once compressed; the limit applies inflated.
        ws.send(Frame::text("a".repeat(4000))).await.unwrap();
        let close = next(&mut ws).await;
        assert_eq!(close.opcode(), OpCode::Close, "deflate={deflate}");
        assert_eq!(close.close_code().map(u16::from), Some(1009));
    }
}

#[tokio::test]
async fn a_bad_echo_path_stops_startup_naming_the_key() {
    for bad in ["/ws", "echo", "/api/echo", "/metrics"] {
        let mut process = Process::spawn(
            "gateway",
            &binary("roomcast-gateway"),
            &[],
            &[
                ("ROOMCAST_LISTEN", "127.0.0.1:0".to_string()),
                ("ROOMCAST_WEBSOCKET__ECHO_PATH", bad.to_string()),
            ],
        );
        let code = process
            .wait_exit(Duration::from_secs(20))
            .unwrap_or_else(|| panic!("echo_path {bad:?}: the node started"));
        let output = process.output();
        assert_eq!(code, Some(2), "{bad}: {output}");
        assert!(output.contains("websocket.echo_path"), "{bad}: {output}");
        assert!(!output.contains("listening on"), "{bad}: {output}");
    }
}

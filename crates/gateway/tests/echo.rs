//! The echo endpoint of `websocket.echo_path` (issue #35): messages come
//! back as they went, through the node's own connection code (its limits
//! included), while `/ws` keeps speaking the protocol; a bad path stops
//! startup. Also the close handshake the Autobahn suite checked, on both
//! endpoints: a peer's close is answered, and a broken frame gets exactly
//! one close frame, with the right code.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use roomcast_protocol::{ClientFrame, Codec, ServerFrame};
use roomcast_testkit::stalled::masked_frame;
use roomcast_testkit::ws::RawClient;
use roomcast_testkit::{binary, Gateway, Process};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use yawc::close::CloseCode;
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

/// A WebSocket on `path` over a bare socket, to see every byte the node
/// sends, close frames included.
async fn raw_upgrade(addr: SocketAddr, path: &str) -> TcpStream {
    raw_upgrade_with(addr, path, "").await.0
}

/// [`raw_upgrade`] with more request headers (each ending in CRLF); also
/// returns the response's head.
async fn raw_upgrade_with(addr: SocketAddr, path: &str, headers: &str) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: cm9vbWNhc3QtdGVzdC1rZXk=\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{path}: {head}");
    (stream, head)
}

/// Sends `frames`, then reads until the node closes the socket (within
/// 5 s): the frames it sent, as (opcode, payload).
async fn frames_until_eof(mut stream: TcpStream, frames: &[Vec<u8>]) -> Vec<(u8, Vec<u8>)> {
    for frame in frames {
        stream.write_all(frame).await.unwrap();
    }
    let mut bytes = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut bytes))
        .await
        .expect("the node did not close the socket")
        .ok();
    let mut frames = Vec::new();
    let mut rest = &bytes[..];
    while rest.len() >= 2 {
        let (len, header) = match rest[1] & 0x7f {
            126 => (u16::from_be_bytes([rest[2], rest[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(rest[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        frames.push((rest[0] & 0x0f, rest[header..header + len].to_vec()));
        rest = &rest[header + len..];
    }
    frames
}

fn close_code(payload: &[u8]) -> u16 {
    u16::from_be_bytes([payload[0], payload[1]])
}

#[tokio::test]
async fn close_frames_are_answered_once_with_the_right_code_on_both_endpoints() {
    let gw = echo_node("65536");
    let hello = masked_frame(0x81, br#"{"type":"hello"}"#);
    for path in ["/echo", "/ws"] {
        let first: Vec<Vec<u8>> = if path == "/ws" {
            vec![hello.clone()]
        } else {
            Vec::new()
        };
        let with = |frame: Vec<u8>| {
            let mut frames = first.clone();
            frames.push(frame);
            frames
        };
        let closes = |frames: &[(u8, Vec<u8>)]| -> Vec<u16> {
            frames
                .iter()
                .filter(|(op, _)| *op == 0x8)
                .map(|(_, p)| close_code(p))
                .collect()
        };

        // A close from the peer is answered with the same code, then the
        // node closes the socket.
        let mut close = 1000u16.to_be_bytes().to_vec();
        close.extend_from_slice(b"bye");
        let got = frames_until_eof(
            raw_upgrade(gw.addr, path).await,
            &with(masked_frame(0x88, &close)),
        )
        .await;
        assert_eq!(closes(&got), [1000], "{path}: {got:?}");
        assert_eq!(got.last().unwrap().1, close, "{path}");

        // An unknown opcode: one close frame, 1002 (not yawc's 1003 as well).
        let got = frames_until_eof(
            raw_upgrade(gw.addr, path).await,
            &with(masked_frame(0x83, b"")),
        )
        .await;
        assert_eq!(closes(&got), [1002], "{path}: {got:?}");

        // A close code nobody may send: 1002, once.
        let got = frames_until_eof(
            raw_upgrade(gw.addr, path).await,
            &with(masked_frame(0x88, &1005u16.to_be_bytes())),
        )
        .await;
        assert_eq!(closes(&got), [1002], "{path}: {got:?}");

        // A close reason that is not UTF-8: 1007, once.
        let got = frames_until_eof(
            raw_upgrade(gw.addr, path).await,
            &with(masked_frame(0x88, &[0x03, 0xe8, 0xff, 0xfe])),
        )
        .await;
        assert_eq!(closes(&got), [1007], "{path}: {got:?}");

        // A close frame over 125 bytes (a control frame's limit): 1002,
        // not an answer that says all is well.
        let mut long = 1000u16.to_be_bytes().to_vec();
        long.extend_from_slice(&[b'*'; 124]);
        let got = frames_until_eof(
            raw_upgrade(gw.addr, path).await,
            &with(masked_frame(0x88, &long)),
        )
        .await;
        assert_eq!(closes(&got), [1002], "{path}: {got:?}");

        // So is a pong over 125 bytes (yawc checks pings only).
        let got = frames_until_eof(
            raw_upgrade(gw.addr, path).await,
            &with(masked_frame(0x8a, &[0u8; 126])),
        )
        .await;
        assert_eq!(closes(&got), [1002], "{path}: {got:?}");
    }
    // Closed by the yawc client too: its close is answered in kind.
    let mut ws = connect(&format!("ws://{}/echo", gw.addr), true).await;
    ws.send(Frame::close(CloseCode::Away, "going"))
        .await
        .unwrap();
    let answer = next(&mut ws).await;
    assert_eq!(answer.close_code().map(u16::from), Some(1001));
}

#[tokio::test]
async fn a_list_of_deflate_offers_negotiates_the_first() {
    let gw = echo_node("65536");
    // Several offers, in the client's order of preference (RFC 7692 §5),
    // as Autobahn's cases 13.7.* make them: yawc alone would read none.
    let offers = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits; \
                  server_no_context_takeover, permessage-deflate; client_max_window_bits\r\n";
    for path in ["/echo", "/ws"] {
        let (_, head) = raw_upgrade_with(gw.addr, path, offers).await;
        assert!(
            head.contains("sec-websocket-extensions: permessage-deflate"),
            "{path}: {head}"
        );
    }
    // The same offers in two header lines.
    let two = "Sec-WebSocket-Extensions: x-unknown\r\n\
               Sec-WebSocket-Extensions: permessage-deflate\r\n";
    let (_, head) = raw_upgrade_with(gw.addr, "/echo", two).await;
    assert!(
        head.contains("sec-websocket-extensions: permessage-deflate"),
        "{head}"
    );
    // Nothing it knows: no extension.
    let unknown = "Sec-WebSocket-Extensions: x-unknown, x-other\r\n";
    let (_, head) = raw_upgrade_with(gw.addr, "/echo", unknown).await;
    assert!(!head.contains("sec-websocket-extensions"), "{head}");
}

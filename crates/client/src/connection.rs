//! One WebSocket to one node, speaking protocol frames instead of bytes.
//!
//! A `Connection` knows nothing about sessions, rooms or reconnecting: it
//! opens the socket (offering the codec's subprotocol and permessage-deflate),
//! turns [`ClientFrame`]s into WebSocket frames and incoming WebSocket frames
//! into [`ServerFrame`]s, and reports how the socket ended. Keeping it this
//! small is what lets the session logic above it be tested as logic and lets
//! a connection be thrown away (and a fresh one made) at any moment.
//!
//! Incoming frames are decoded by their WebSocket opcode (text is JSON, binary
//! is MessagePack), which is what the protocol ties each subprotocol to. WebSocket
//! pings are answered by yawc itself; they still reach [`Connection::recv`] as a
//! sign of life for the heartbeat watchdog. A frame the client cannot decode
//! (a frame type newer than this client, for instance) is skipped, as the
//! protocol's rule for extensions asks.

use std::sync::OnceLock;
use std::time::Duration;

use futures::SinkExt;
use roomcast_protocol::{ClientFrame, Codec, ServerFrame};
use url::Url;
use yawc::close::CloseCode;
use yawc::{DeflatePool, Frame, HttpRequest, OpCode, Options, TcpWebSocket};

/// Socket buffers start this small; they grow for large frames and shrink
/// back, so an idle client (a load generator holds thousands) stays cheap.
const BUFFER_BYTES: usize = 4 * 1024;
/// Messages below this size are sent uncompressed: deflate rarely shrinks
/// them and skipping it saves CPU.
const COMPRESSION_THRESHOLD: usize = 256;
/// How long a clean close waits for the server's close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// What came in.
#[derive(Debug)]
pub(crate) enum Incoming {
    Frame(ServerFrame),
    /// A ping, a pong or a frame that was skipped: only proof of life.
    Alive,
    /// The server closed the WebSocket with this code.
    Closed {
        code: u16,
        reason: String,
    },
    /// The socket failed or ended without a close frame.
    Lost(String),
}

/// Why a send failed.
#[derive(Debug)]
pub(crate) enum SendError {
    /// The frame itself cannot be encoded; the connection is fine.
    Encode(String),
    /// The socket failed (or a write blocked for too long); the connection is
    /// done.
    Transport(String),
}

pub(crate) struct Connection {
    ws: TcpWebSocket,
    codec: Codec,
    write_timeout: Duration,
}

impl Connection {
    /// Opens a WebSocket to `url` (TCP connect and HTTP upgrade; no `hello`).
    pub(crate) async fn open(url: &Url, codec: Codec, compression: bool) -> Result<Self, String> {
        let request = HttpRequest::builder().header("Sec-WebSocket-Protocol", codec.subprotocol());
        let ws = yawc::WebSocket::connect(url.clone())
            .with_options(options(compression))
            .with_request(request)
            .await
            .map_err(|e| match e {
                yawc::WebSocketError::InvalidStatusCode(status) => {
                    format!("upgrade refused with HTTP {status}")
                }
                other => other.to_string(),
            })?;
        Ok(Connection {
            ws,
            codec,
            write_timeout: Duration::from_secs(10),
        })
    }

    /// Bounds how long one write may block on a peer that stopped reading.
    pub(crate) fn set_write_timeout(&mut self, timeout: Duration) {
        self.write_timeout = timeout;
    }

    pub(crate) async fn send(&mut self, frame: &ClientFrame) -> Result<(), SendError> {
        let bytes = self.codec.encode(frame).map_err(SendError::Encode)?;
        let ws_frame = if self.codec.is_binary() {
            Frame::binary(bytes)
        } else {
            Frame::text(bytes)
        };
        match tokio::time::timeout(self.write_timeout, self.ws.send(ws_frame)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(SendError::Transport(e.to_string())),
            Err(_) => Err(SendError::Transport(format!(
                "write blocked for {:?}",
                self.write_timeout
            ))),
        }
    }

    /// The next thing that happened on the socket. Cancel-safe: a frame
    /// half-read when the future is dropped stays buffered in the socket.
    pub(crate) async fn recv(&mut self) -> Incoming {
        let frame = match self.ws.next_frame().await {
            Ok(frame) => frame,
            Err(e) => return Incoming::Lost(e.to_string()),
        };
        let codec = match frame.opcode() {
            OpCode::Text => Codec::Json,
            OpCode::Binary => Codec::MsgPack,
            OpCode::Close => {
                return Incoming::Closed {
                    code: frame.close_code().map(u16::from).unwrap_or(1005),
                    reason: frame
                        .close_reason()
                        .ok()
                        .flatten()
                        .unwrap_or_default()
                        .to_string(),
                }
            }
            OpCode::Ping | OpCode::Pong | OpCode::Continuation => return Incoming::Alive,
        };
        match codec.decode::<ServerFrame>(frame.payload()) {
            Ok(frame) => Incoming::Frame(frame),
            Err(e) => {
                tracing::debug!(error = %e, "skipping a server frame this client cannot decode");
                Incoming::Alive
            }
        }
    }

    /// Closes with 1000 and waits briefly for the server's close frame.
    pub(crate) async fn close(mut self) {
        let closing = async {
            if self
                .ws
                .send(Frame::close(CloseCode::Normal, b""))
                .await
                .is_err()
            {
                return;
            }
            while self.ws.next_frame().await.is_ok() {}
        };
        let _ = tokio::time::timeout(CLOSE_WAIT, closing).await;
    }
}

/// WebSocket options: permessage-deflate offered without context takeover in
/// either direction, deflate state borrowed from one process-wide pool for the
/// length of a message, small buffers, no Nagle delay.
fn options(compression: bool) -> Options {
    let options = Options::default()
        .with_read_buffer_capacity(BUFFER_BYTES)
        .with_write_buffer_capacity(BUFFER_BYTES)
        .with_no_delay();
    if !compression {
        return options.without_compression();
    }
    options
        .with_low_latency_compression()
        .client_no_context_takeover()
        .server_no_context_takeover()
        .with_compression_threshold(COMPRESSION_THRESHOLD)
        .with_deflate_pool(deflate_pool())
}

fn deflate_pool() -> DeflatePool {
    static POOL: OnceLock<DeflatePool> = OnceLock::new();
    POOL.get_or_init(|| {
        let threads = std::thread::available_parallelism().map_or(4, |n| n.get());
        DeflatePool::new(threads * 2)
    })
    .clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Captures the upgrade request a client sends, answering it with 400.
    async fn upgrade_request(codec: Codec, compression: bool) -> (String, String) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url: Url = format!("ws://{}/ws", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = socket.read(&mut buf).await.unwrap();
                assert!(n > 0, "request ended early");
                request.extend_from_slice(&buf[..n]);
            }
            socket
                .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
            String::from_utf8(request).unwrap().to_ascii_lowercase()
        });
        let err = match Connection::open(&url, codec, compression).await {
            Ok(_) => panic!("a 400 answer must not open a connection"),
            Err(e) => e,
        };
        (server.await.unwrap(), err)
    }

    #[tokio::test]
    async fn the_upgrade_offers_the_codec_and_deflate_without_context_takeover() {
        let (request, err) = upgrade_request(Codec::MsgPack, true).await;
        assert!(request.starts_with("get /ws http/1.1\r\n"), "{request}");
        assert!(
            request.contains("sec-websocket-protocol: roomcast.v1.msgpack\r\n"),
            "{request}"
        );
        let extensions = request
            .lines()
            .find(|l| l.starts_with("sec-websocket-extensions:"))
            .expect("permessage-deflate is offered");
        for part in [
            "permessage-deflate",
            "client_no_context_takeover",
            "server_no_context_takeover",
        ] {
            assert!(extensions.contains(part), "{extensions}");
        }
        assert_eq!(err, "upgrade refused with HTTP 400");
    }

    #[tokio::test]
    async fn compression_can_be_left_out_of_the_offer() {
        let (request, _) = upgrade_request(Codec::Json, false).await;
        assert!(request.contains("sec-websocket-protocol: roomcast.v1.json\r\n"));
        assert!(!request.contains("sec-websocket-extensions"), "{request}");
    }
}

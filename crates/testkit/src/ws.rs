//! A raw protocol client for tests: one socket, frames in and out exactly as
//! written, close codes visible. The project's client library hides all of
//! that (reconnects, dedup); tests that pin down the wire need it bare.

use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use roomcast_protocol::{ClientFrame, Codec, ServerFrame};
use yawc::{Frame, OpCode, Options, WebSocket};

/// What arrived on the socket.
#[derive(Debug)]
pub enum Event {
    Frame(ServerFrame),
    /// A close frame with this code (1005 when it carried none), or 1006 when
    /// the socket ended without one.
    Closed(u16),
}

pub struct RawClient {
    ws: WebSocket<yawc::MaybeTlsStream<tokio::net::TcpStream>>,
    pub codec: Codec,
    /// WebSocket pings received so far (yawc answers each with a pong).
    pub pings: usize,
}

/// How long `recv` waits before failing the test.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(10);

impl RawClient {
    /// Connects with the codec's subprotocol and permessage-deflate offered.
    pub async fn connect(url: &str, codec: Codec) -> RawClient {
        Self::connect_with(url, codec, &[], true)
            .await
            .unwrap_or_else(|e| panic!("connect {url}: {e}"))
    }

    /// Connects from `local` (another loopback address, say `127.0.0.2`,
    /// to be a client of its own for per-address limits), without
    /// permessage-deflate.
    pub async fn connect_from(
        url: &str,
        codec: Codec,
        local: std::net::IpAddr,
    ) -> Result<RawClient, String> {
        Self::connect_full(url, codec, &[], false, Some(local)).await
    }

    pub async fn connect_with(
        url: &str,
        codec: Codec,
        headers: &[(&str, &str)],
        deflate: bool,
    ) -> Result<RawClient, String> {
        Self::connect_full(url, codec, headers, deflate, None).await
    }

    async fn connect_full(
        url: &str,
        codec: Codec,
        headers: &[(&str, &str)],
        deflate: bool,
        local: Option<std::net::IpAddr>,
    ) -> Result<RawClient, String> {
        let mut request =
            http::Request::builder().header("Sec-WebSocket-Protocol", codec.subprotocol());
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let mut options = Options::default().with_max_payload_read(16 << 20);
        options = if deflate {
            options
                .with_low_latency_compression()
                .client_no_context_takeover()
                .server_no_context_takeover()
        } else {
            options.without_compression()
        };
        let url = url.parse().map_err(|e| format!("{e}"))?;
        let mut builder = WebSocket::connect(url)
            .with_options(options)
            .with_request(request);
        if let Some(local) = local {
            builder = builder.with_local_address(local);
        }
        let ws = builder.await.map_err(|e| e.to_string())?;
        Ok(RawClient {
            ws,
            codec,
            pings: 0,
        })
    }

    pub async fn send(&mut self, frame: &ClientFrame) {
        let bytes = self.codec.encode(frame).expect("encode");
        self.send_bytes(bytes).await;
    }

    /// Sends bytes as a frame of the codec's kind (text or binary).
    pub async fn send_bytes(&mut self, bytes: impl Into<Bytes>) {
        let frame = if self.codec.is_binary() {
            Frame::binary(bytes.into())
        } else {
            Frame::text(bytes.into())
        };
        self.ws.send(frame).await.expect("send");
    }

    /// Sends a raw WebSocket frame.
    pub async fn send_frame(&mut self, frame: Frame) -> Result<(), String> {
        self.ws.send(frame).await.map_err(|e| e.to_string())
    }

    /// The next frame or close, within `RECV_TIMEOUT`.
    pub async fn next_event(&mut self) -> Event {
        self.next_event_within(RECV_TIMEOUT)
            .await
            .expect("nothing received in time")
    }

    pub async fn next_event_within(&mut self, timeout: Duration) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?;
            let Some(frame) = frame else {
                return Some(Event::Closed(1006));
            };
            match frame.opcode() {
                OpCode::Text | OpCode::Binary => {
                    let decoded = self
                        .codec
                        .decode::<ServerFrame>(frame.payload())
                        .unwrap_or_else(|e| panic!("undecodable server frame: {e}"));
                    return Some(Event::Frame(decoded));
                }
                OpCode::Close => {
                    return Some(Event::Closed(
                        frame.close_code().map(u16::from).unwrap_or(1005),
                    ))
                }
                OpCode::Ping => self.pings += 1,
                _ => {}
            }
        }
    }

    /// The next frame; fails the test on a close or a timeout.
    pub async fn recv(&mut self) -> ServerFrame {
        match self.next_event().await {
            Event::Frame(f) => f,
            Event::Closed(code) => {
                panic!("connection closed with {code} while a frame was expected")
            }
        }
    }

    /// Skips frames until one matches `pick`.
    pub async fn recv_until<T>(&mut self, mut pick: impl FnMut(&ServerFrame) -> Option<T>) -> T {
        loop {
            let frame = self.recv().await;
            if let Some(t) = pick(&frame) {
                return t;
            }
        }
    }

    /// Waits for the close; returns its code (skipping frames before it).
    pub async fn expect_close(&mut self) -> u16 {
        loop {
            if let Event::Closed(code) = self.next_event().await {
                return code;
            }
        }
    }

    /// Sends `hello` (with an optional token) and returns the `welcome`.
    pub async fn hello(&mut self, token: Option<&str>) -> ServerFrame {
        self.send(&ClientFrame::Hello {
            id: Some(0),
            token: token.map(str::to_string),
            resume: None,
        })
        .await;
        let frame = self.recv().await;
        assert!(
            matches!(frame, ServerFrame::Welcome { .. }),
            "expected welcome, got {frame:?}"
        );
        frame
    }

    /// Connects and says hello anonymously.
    pub async fn ready(url: &str, codec: Codec) -> (RawClient, ServerFrame) {
        let mut client = RawClient::connect(url, codec).await;
        let welcome = client.hello(None).await;
        (client, welcome)
    }

    /// Sends a command and waits for the frame answering its `id`.
    pub async fn request(&mut self, frame: ClientFrame) -> ServerFrame {
        let id = frame.id().expect("request needs an id");
        self.send(&frame).await;
        self.recv_until(|f| (f.reply_id() == Some(id)).then(|| f.clone()))
            .await
    }

    /// Skips frames until a `message` of a room whose name starts with
    /// `room_prefix` (`""`: any room); returns its data and offset.
    pub async fn next_message(&mut self, room_prefix: &str) -> (serde_json::Value, u64) {
        self.recv_until(|f| match f {
            ServerFrame::Message {
                room, data, offset, ..
            } if room.starts_with(room_prefix) => Some((data.clone(), *offset)),
            _ => None,
        })
        .await
    }

    /// Drops the TCP connection without a close handshake.
    pub fn abort(self) {
        drop(self);
    }
}

/// The offset of an `ack` frame; `None` for any other frame or an ack
/// without one.
pub fn ack_offset(frame: &ServerFrame) -> Option<u64> {
    match frame {
        ServerFrame::Ack { offset, .. } => *offset,
        _ => None,
    }
}

/// Join frame shorthand.
pub fn join(id: u64, room: &str) -> ClientFrame {
    ClientFrame::Join {
        id: Some(id),
        room: room.into(),
        since: None,
        presence: None,
    }
}

/// Join frame shorthand for a member that also receives the room's
/// `presence_join` and `presence_leave` events.
pub fn join_watching(id: u64, room: &str) -> ClientFrame {
    ClientFrame::Join {
        id: Some(id),
        room: room.into(),
        since: None,
        presence: Some(true),
    }
}

/// Publish frame shorthand.
pub fn publish(id: u64, room: &str, data: serde_json::Value) -> ClientFrame {
    ClientFrame::Publish {
        id: Some(id),
        room: room.into(),
        data,
        key: None,
    }
}

/// A `hello` (id 1) resuming `session` with one room from `offset`.
pub fn resume_hello(
    session: &str,
    token: &str,
    room: &str,
    offset: u64,
    epoch: &str,
) -> ClientFrame {
    ClientFrame::Hello {
        id: Some(1),
        token: None,
        resume: Some(roomcast_protocol::Resume {
            session: session.to_string(),
            token: token.to_string(),
            rooms: vec![roomcast_protocol::ResumeRoom {
                room: room.into(),
                offset,
                epoch: epoch.to_string(),
                presence: None,
            }],
        }),
    }
}

/// A client that said `hello` and joined a room, with what a resume of its
/// session needs.
pub struct Joined {
    pub client: RawClient,
    pub session: String,
    pub user: String,
    pub token: String,
    pub offset: u64,
    pub epoch: String,
}

impl Joined {
    /// Ends the connection with a close frame (the node parks the session)
    /// and waits for it to end, whatever code the node answers with.
    pub async fn close(&mut self) {
        self.client
            .send_frame(Frame::close(yawc::close::CloseCode::Normal, b""))
            .await
            .unwrap();
        self.client.expect_close().await;
    }

    /// Whether a resume of this session (in `room`, from where it joined)
    /// on a new connection to `url` resumed it.
    pub async fn resumes(&self, url: &str, room: &str) -> bool {
        self.resume_on(url, room).await.1
    }

    /// Resumes this session (in `room`, from where it joined) on a new
    /// connection to `url`: the connection, past its `welcome`, and whether
    /// it resumed.
    pub async fn resume_on(&self, url: &str, room: &str) -> (RawClient, bool) {
        let mut back = RawClient::connect(url, Codec::Json).await;
        back.send(&resume_hello(
            &self.session,
            &self.token,
            room,
            self.offset,
            &self.epoch,
        ))
        .await;
        match back.recv().await {
            ServerFrame::Welcome { resumed, .. } => (back, resumed),
            other => panic!("{other:?}"),
        }
    }
}

/// Connects to `url` and joins `room` (join id 1).
pub async fn joined(url: &str, room: &str) -> Joined {
    let (mut client, welcome) = RawClient::ready(url, Codec::Json).await;
    let ServerFrame::Welcome {
        session,
        user,
        resume_token,
        ..
    } = welcome
    else {
        panic!("{welcome:?}")
    };
    let (offset, epoch) = match client.request(join(1, room)).await {
        ServerFrame::Joined { offset, epoch, .. } => (offset, epoch),
        other => panic!("{other:?}"),
    };
    Joined {
        client,
        session,
        user,
        token: resume_token,
        offset,
        epoch,
    }
}

/// Connects, joins `room`, then resumes the session on a second connection
/// while the first is still open (a client back before its old socket was
/// seen dead); checks the resume and that the takeover closed the first one
/// with 1000. Returns the new connection and the session id.
pub async fn resume_over_a_lingering_connection(url: &str, room: &str) -> (RawClient, String) {
    let Joined {
        client: mut old,
        session,
        token,
        offset,
        epoch,
        ..
    } = joined(url, room).await;
    let mut new = RawClient::connect(url, Codec::Json).await;
    new.send(&resume_hello(&session, &token, room, offset, &epoch))
        .await;
    match new.recv().await {
        ServerFrame::Welcome { resumed, .. } => assert!(resumed, "not resumed"),
        other => panic!("{other:?}"),
    }
    assert_eq!(old.expect_close().await, 1000);
    (new, session)
}

/// What [`close_and_resume_at_once`] leaves: the last connection, its
/// session and resume token, and how many resumes started a fresh session
/// (the loop stops at the first).
pub struct Resumed {
    pub client: RawClient,
    pub session: String,
    pub token: String,
    pub fresh: usize,
}

/// Connects and joins `room`, then `cycles` times sends a close and, without
/// waiting for its answer, resumes the session on a new connection (a
/// client that reconnects at once: the resume races the old connection's
/// teardown).
pub async fn close_and_resume_at_once(url: &str, room: &str, cycles: usize) -> Resumed {
    let Joined {
        mut client,
        session,
        mut token,
        mut offset,
        epoch,
        ..
    } = joined(url, room).await;
    let mut fresh = 0;
    for _ in 0..cycles {
        client
            .send_frame(yawc::Frame::close(yawc::close::CloseCode::Normal, b""))
            .await
            .unwrap();
        let mut back = RawClient::connect(url, Codec::Json).await;
        back.send(&resume_hello(&session, &token, room, offset, &epoch))
            .await;
        client = back;
        match client.recv().await {
            ServerFrame::Welcome {
                resumed,
                resume_token,
                rooms,
                ..
            } => {
                if !resumed {
                    fresh += 1;
                    break;
                }
                token = resume_token;
                offset = rooms[0].offset;
            }
            other => panic!("{other:?}"),
        }
    }
    Resumed {
        client,
        session,
        token,
        fresh,
    }
}

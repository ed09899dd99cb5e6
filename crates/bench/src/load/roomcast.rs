//! A roomcast connection: `GET /ws` with the `roomcast.v1.json`
//! subprotocol, `hello` (optionally resuming a session), `join` (optionally
//! with `since`), `publish` without an id, and the frames that come back.
//!
//! Control frames are decoded with the protocol crate's types; `message`
//! frames, the hot path, with a borrowed struct that reads only the room,
//! the offset and the payload's stamp.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::net::SocketAddr;

use anyhow::{anyhow, bail, Context, Result};
use futures::{SinkExt, StreamExt};
use roomcast_protocol::{ClientFrame, Codec, Resume, ResumeRoom, ServerFrame, Since};
use serde::Deserialize;
use tokio::net::TcpStream;
use yawc::{Frame, HttpRequest, OpCode, Options, WebSocket};

use super::{room_index, room_name, Event, Joined, MaybeStamp, Opened, ResumeState, RoomPosition};

/// The `message` frame, as far as the benchmark reads it.
#[derive(Deserialize)]
struct MessageFrame<'a> {
    #[serde(borrow)]
    room: Cow<'a, str>,
    offset: u64,
    data: MaybeStamp,
}

/// Every `message` frame a node writes starts with this (the tag first).
const MESSAGE_PREFIX: &[u8] = br#"{"type":"message""#;

pub struct RoomcastConn {
    ws: WebSocket<TcpStream>,
    pending: VecDeque<Event>,
    next_id: u64,
}

/// A frame read off the socket.
enum Read {
    Event(Event),
    Control(ServerFrame),
}

impl RoomcastConn {
    /// Upgrades `stream`, says `hello` and waits for `welcome`.
    pub async fn open(
        node: SocketAddr,
        stream: TcpStream,
        options: Options,
        resume: Option<&ResumeState>,
    ) -> Result<(RoomcastConn, Opened)> {
        let url = format!("ws://{node}/ws").parse()?;
        let request =
            HttpRequest::builder().header("Sec-WebSocket-Protocol", Codec::Json.subprotocol());
        let ws = WebSocket::handshake_with_request(url, stream, options, request)
            .await
            .with_context(|| format!("WebSocket upgrade at {node}"))?;
        let mut conn = RoomcastConn {
            ws,
            pending: VecDeque::new(),
            next_id: 1,
        };
        let resume = resume.map(|r| Resume {
            session: r.session.clone(),
            token: r.token.clone(),
            rooms: r
                .rooms
                .iter()
                .map(|p| ResumeRoom {
                    room: room_name(p.room),
                    offset: p.offset,
                    epoch: p.epoch.clone(),
                    presence: None,
                })
                .collect(),
        });
        conn.send_frame(&ClientFrame::Hello {
            id: Some(0),
            token: None,
            resume,
        })
        .await?;
        loop {
            match conn.read().await? {
                Read::Control(ServerFrame::Welcome {
                    session,
                    resume_token,
                    resumed,
                    rooms,
                    ..
                }) => {
                    let rooms = rooms
                        .into_iter()
                        .filter_map(|s| {
                            Some((
                                RoomPosition {
                                    room: room_index(&s.room)?,
                                    offset: s.offset,
                                    epoch: s.epoch,
                                },
                                s.recovered,
                            ))
                        })
                        .collect();
                    let opened = Opened {
                        session,
                        resume_token,
                        resumed,
                        rooms,
                    };
                    return Ok((conn, opened));
                }
                Read::Control(ServerFrame::Error { code, message, .. }) => {
                    bail!("hello refused: {code:?}: {message}")
                }
                Read::Event(Event::Closed(code)) => bail!("closed ({code:?}) before welcome"),
                Read::Event(event) => conn.pending.push_back(event),
                Read::Control(_) => {}
            }
        }
    }

    pub async fn join(&mut self, room: u32, since: Option<&RoomPosition>) -> Result<Joined> {
        let id = self.next_id;
        self.next_id += 1;
        self.send_frame(&ClientFrame::Join {
            id: Some(id),
            room: room_name(room),
            since: since.map(|p| Since {
                offset: p.offset,
                epoch: p.epoch.clone(),
            }),
            presence: None,
        })
        .await?;
        loop {
            match self.read().await? {
                Read::Control(ServerFrame::Joined {
                    id: Some(got),
                    offset,
                    epoch,
                    recovered,
                    ..
                }) if got == id => {
                    return Ok(Joined {
                        position: RoomPosition {
                            room,
                            offset,
                            epoch,
                        },
                        recovered,
                    })
                }
                Read::Control(ServerFrame::Error {
                    id: Some(got),
                    code,
                    message,
                }) if got == id => bail!("join refused: {code:?}: {message}"),
                Read::Event(Event::Closed(code)) => bail!("closed ({code:?}) while joining"),
                Read::Event(event) => self.pending.push_back(event),
                Read::Control(frame) => self.pending.push_back(control_event(frame)),
            }
        }
    }

    pub async fn publish(&mut self, room: u32, payload: &str) -> Result<()> {
        let text = match publish_key() {
            Some(key) => format!(
                r#"{{"type":"publish","room":"{}","key":"{key}","data":{payload}}}"#,
                room_name(room)
            ),
            None => format!(
                r#"{{"type":"publish","room":"{}","data":{payload}}}"#,
                room_name(room)
            ),
        };
        self.ws.send(Frame::text(text)).await?;
        Ok(())
    }

    pub async fn next_event(&mut self) -> Result<Event> {
        if let Some(event) = self.pending.pop_front() {
            return Ok(event);
        }
        Ok(match self.read().await? {
            Read::Event(event) => event,
            Read::Control(frame) => control_event(frame),
        })
    }

    async fn send_frame(&mut self, frame: &ClientFrame) -> Result<()> {
        let bytes = Codec::Json.encode(frame).map_err(|e| anyhow!(e))?;
        self.ws.send(Frame::text(bytes)).await?;
        Ok(())
    }

    async fn read(&mut self) -> Result<Read> {
        loop {
            let Some(frame) = self.ws.next().await else {
                return Ok(Read::Event(Event::Closed(None)));
            };
            match frame.opcode() {
                OpCode::Text | OpCode::Binary => return decode(frame.payload()),
                OpCode::Close => {
                    return Ok(Read::Event(Event::Closed(
                        frame.close_code().map(u16::from),
                    )))
                }
                _ => {}
            }
        }
    }
}

fn decode(bytes: &[u8]) -> Result<Read> {
    if bytes.starts_with(MESSAGE_PREFIX) {
        if let Ok(m) = serde_json::from_slice::<MessageFrame>(bytes) {
            if let Some(room) = room_index(&m.room) {
                return Ok(Read::Event(Event::Message {
                    room,
                    stamp: m.data.stamp(),
                    offset: Some(m.offset),
                }));
            }
        }
    }
    let frame: ServerFrame = Codec::Json
        .decode(bytes)
        .map_err(|e| anyhow!("undecodable server frame: {e}"))?;
    Ok(match frame {
        ServerFrame::Message { room, offset, .. } => match room_index(&room) {
            Some(room) => Read::Event(Event::Message {
                room,
                stamp: None,
                offset: Some(offset),
            }),
            None => Read::Event(Event::Other),
        },
        other => Read::Control(other),
    })
}

fn control_event(frame: ServerFrame) -> Event {
    match frame {
        ServerFrame::Reconnect { after_ms, .. } => Event::Reconnect { after_ms },
        ServerFrame::Error { code, .. } => Event::ServerError(code.as_str().to_string()),
        _ => Event::Other,
    }
}

/// With `BENCH_PUBLISH_KEYS=1`, every publish carries an idempotency key
/// (unique per process and publish), as the clients send them: the cost of
/// the key check on the publish path.
fn publish_key() -> Option<String> {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    if !*ON.get_or_init(|| std::env::var("BENCH_PUBLISH_KEYS").is_ok_and(|v| v == "1")) {
        return None;
    }
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Some(format!("b{}-{n}", std::process::id()))
}

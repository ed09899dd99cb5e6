//! The Engine.IO v4 / Socket.IO v5 subset the peers need, over the
//! websocket transport only (no polling, no upgrade):
//!
//! - `GET /socket.io/?EIO=4&transport=websocket`; the server's first frame is
//!   the Engine.IO open packet `0{"sid":…,"pingInterval":…}`;
//! - `40` connects to the default namespace, answered by `40{"sid":…}`
//!   (`44{…}` is a refusal);
//! - the server pings with `2`, the client answers `3`;
//! - events are `42["name",arg]`, with an ack id after the `42` when an ack
//!   is wanted (`421["join","room"]`), acked by `431[…]`;
//! - `41` (Socket.IO) or `1` (Engine.IO) closes.
//!
//! The peers' servers (bench/peers) handle `join` (acked) and `publish`, and
//! emit `message` events `{room, data}` to the room's members.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::net::SocketAddr;

use anyhow::{bail, Context, Result};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::net::TcpStream;
use yawc::{Frame, HttpRequest, OpCode, Options, WebSocket};

use super::{room_index, room_name, Event, Joined, MaybeStamp, RoomPosition};

/// The websocket-only Engine.IO v4 endpoint.
pub const PATH: &str = "/socket.io/?EIO=4&transport=websocket";

/// The argument of a `message` event.
#[derive(Deserialize)]
struct MessageArg<'a> {
    #[serde(borrow)]
    room: Cow<'a, str>,
    data: MaybeStamp,
}

pub struct SocketIoConn {
    ws: WebSocket<TcpStream>,
    pending: VecDeque<Event>,
    next_ack: u64,
}

/// A text frame, classified.
enum Packet {
    Event(Event),
    /// A Socket.IO ack (`43<id>[…]`).
    Ack(u64),
    /// The namespace connect answer (`40{…}`).
    Connected,
    /// A namespace connect refusal (`44{…}`).
    Refused(String),
}

impl SocketIoConn {
    /// Upgrades `stream`, reads the open packet and connects to `/`.
    pub async fn open(
        node: SocketAddr,
        stream: TcpStream,
        options: Options,
    ) -> Result<SocketIoConn> {
        let url = format!("ws://{node}{PATH}").parse()?;
        let ws = WebSocket::handshake_with_request(url, stream, options, HttpRequest::builder())
            .await
            .with_context(|| format!("WebSocket upgrade at {node}"))?;
        let mut conn = SocketIoConn {
            ws,
            pending: VecDeque::new(),
            next_ack: 1,
        };
        match conn.read_text().await? {
            Some(text) if text.starts_with('0') => {}
            Some(text) => bail!("expected the Engine.IO open packet, got {text:?}"),
            None => bail!("closed before the Engine.IO open packet"),
        }
        conn.send_text("40").await?;
        loop {
            match conn.read_packet().await? {
                Packet::Connected => return Ok(conn),
                Packet::Refused(why) => bail!("namespace connect refused: {why}"),
                Packet::Event(Event::Closed(code)) => bail!("closed ({code:?}) while connecting"),
                Packet::Event(event) => conn.pending.push_back(event),
                Packet::Ack(_) => {}
            }
        }
    }

    pub async fn join(&mut self, room: u32) -> Result<Joined> {
        let id = self.next_ack;
        self.next_ack += 1;
        let text = format!(r#"42{id}["join","{}"]"#, room_name(room));
        self.send_text(&text).await?;
        loop {
            match self.read_packet().await? {
                Packet::Ack(got) if got == id => {
                    return Ok(Joined {
                        position: RoomPosition {
                            room,
                            ..RoomPosition::default()
                        },
                        recovered: None,
                    })
                }
                Packet::Event(Event::Closed(code)) => bail!("closed ({code:?}) while joining"),
                Packet::Event(event) => self.pending.push_back(event),
                _ => {}
            }
        }
    }

    pub async fn publish(&mut self, room: u32, payload: &str) -> Result<()> {
        let text = format!(
            r#"42["publish",{{"room":"{}","data":{payload}}}]"#,
            room_name(room)
        );
        self.send_text(&text).await
    }

    pub async fn next_event(&mut self) -> Result<Event> {
        if let Some(event) = self.pending.pop_front() {
            return Ok(event);
        }
        loop {
            match self.read_packet().await? {
                Packet::Event(event) => return Ok(event),
                _ => continue,
            }
        }
    }

    async fn send_text(&mut self, text: &str) -> Result<()> {
        self.ws.send(Frame::text(text.to_owned())).await?;
        Ok(())
    }

    /// The next text frame (answering Engine.IO pings on the way); `None`
    /// once the connection ended.
    async fn read_text(&mut self) -> Result<Option<String>> {
        loop {
            let Some(frame) = self.ws.next().await else {
                return Ok(None);
            };
            match frame.opcode() {
                OpCode::Text => {
                    let text = String::from_utf8_lossy(frame.payload()).into_owned();
                    if text == "2" {
                        self.send_text("3").await?;
                        continue;
                    }
                    return Ok(Some(text));
                }
                OpCode::Close => return Ok(None),
                _ => {}
            }
        }
    }

    async fn read_packet(&mut self) -> Result<Packet> {
        loop {
            let Some(frame) = self.ws.next().await else {
                return Ok(Packet::Event(Event::Closed(None)));
            };
            match frame.opcode() {
                OpCode::Text => {}
                OpCode::Close => {
                    return Ok(Packet::Event(Event::Closed(
                        frame.close_code().map(u16::from),
                    )))
                }
                _ => continue,
            }
            let bytes = frame.payload();
            if bytes.as_ref() == b"2" {
                self.send_text("3").await?;
                continue;
            }
            return Ok(classify(bytes.as_ref()));
        }
    }
}

fn classify(bytes: &[u8]) -> Packet {
    match bytes {
        [b'4', b'2', rest @ ..] => Packet::Event(event(skip_digits(rest).1)),
        [b'4', b'3', rest @ ..] => {
            let (id, _) = skip_digits(rest);
            Packet::Ack(id.unwrap_or(0))
        }
        [b'4', b'0', ..] => Packet::Connected,
        [b'4', b'4', rest @ ..] => Packet::Refused(String::from_utf8_lossy(rest).into_owned()),
        [b'4', b'1', ..] | [b'1', ..] => Packet::Event(Event::Closed(None)),
        _ => Packet::Event(Event::Other),
    }
}

/// Splits a leading decimal number (an ack id) off `bytes`.
fn skip_digits(bytes: &[u8]) -> (Option<u64>, &[u8]) {
    let n = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    let id = std::str::from_utf8(&bytes[..n])
        .ok()
        .and_then(|s| s.parse().ok());
    (id, &bytes[n..])
}

/// A `["message", {room, data}]` event, or `Other`.
fn event(array: &[u8]) -> Event {
    match serde_json::from_slice::<(Cow<str>, MessageArg)>(array) {
        Ok((name, arg)) if name == "message" => match room_index(&arg.room) {
            Some(room) => Event::Message {
                room,
                stamp: arg.data.stamp(),
                offset: None,
            },
            None => Event::Other,
        },
        _ => Event::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_are_classified() {
        assert!(matches!(classify(b"40{\"sid\":\"x\"}"), Packet::Connected));
        assert!(matches!(classify(b"431[{\"ok\":true}]"), Packet::Ack(1)));
        assert!(matches!(classify(b"4312[]"), Packet::Ack(12)));
        assert!(matches!(
            classify(b"44{\"message\":\"no\"}"),
            Packet::Refused(_)
        ));
        assert!(matches!(
            classify(b"41"),
            Packet::Event(Event::Closed(None))
        ));
        match classify(br#"42["message",{"room":"bench-7","data":{"t":5,"p":2,"s":9,"x":"ab"}}]"#) {
            Packet::Event(Event::Message {
                room,
                stamp,
                offset,
            }) => {
                assert_eq!(room, 7);
                assert_eq!(stamp.map(|s| (s.t, s.p, s.s)), Some((5, 2, 9)));
                assert_eq!(offset, None);
            }
            _ => panic!("not a message"),
        }
        assert!(matches!(
            classify(br#"42["other",1]"#),
            Packet::Event(Event::Other)
        ));
    }
}

//! One generated client connection, speaking either roomcast's JSON
//! subprotocol ([`roomcast`]) or the Engine.IO v4 / Socket.IO v5 subset the
//! peers need ([`socketio`]), behind one small interface: open (with a resume
//! for roomcast), join a room, publish, and read the next [`Event`].
//!
//! Every published payload carries a [`Stamp`]: the publisher's clock at send
//! time (microseconds since the epoch), the publisher's id and a per-(publisher,
//! room) sequence number. Receivers get latency from the first and detect
//! loss and duplicates from the other two, the same way whatever the server.

pub mod roomcast;
pub mod socketio;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{anyhow, Result};
use serde::{Deserialize, Serialize};
use yawc::DeflatePool;

use crate::net;

/// The wire protocol a connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// roomcast's `roomcast.v1.json` subprotocol on `/ws`.
    Roomcast,
    /// Engine.IO v4 / Socket.IO v5 over the websocket transport only.
    SocketIo,
}

/// What every benchmark payload starts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    /// Send time, microseconds since the Unix epoch.
    pub t: u64,
    /// Publisher id.
    pub p: u32,
    /// Sequence number of this (publisher, room) stream, from 0.
    pub s: u64,
}

/// The publisher id of the one message each connection exchanges while it
/// sets up (the `idle` scenario); never counted as benchmark traffic.
pub const EXCHANGE_PUBLISHER: u32 = u32::MAX;

const ROOM_PREFIX: &str = "bench-";

/// Room `r`'s name.
pub fn room_name(r: u32) -> String {
    format!("{ROOM_PREFIX}{r}")
}

/// The index of a benchmark room from its name.
pub fn room_index(name: &str) -> Option<u32> {
    name.strip_prefix(ROOM_PREFIX)?.parse().ok()
}

/// The payload (the `data` of a publish) for `stamp`, padded with `pad`.
pub fn payload(stamp: Stamp, pad: &str) -> String {
    format!(
        r#"{{"t":{},"p":{},"s":{},"x":"{pad}"}}"#,
        stamp.t, stamp.p, stamp.s
    )
}

/// Filler that brings a payload to about `payload_bytes` bytes: words, so it
/// compresses about as well as chat text does.
pub fn padding(payload_bytes: usize) -> String {
    const FIXED: usize = 48; // {"t":…,"p":…,"s":…,"x":""} with typical numbers
    const WORDS: [&str; 8] = [
        "hello ",
        "roomcast ",
        "bench ",
        "the ",
        "quick ",
        "brown ",
        "fox ",
        "jumps ",
    ];
    filler(payload_bytes.saturating_sub(FIXED), &WORDS, 0)
}

/// Exactly `len` bytes of `words` (ASCII), every third one in turn from
/// the `first`-th on: text that compresses about as well as chat does.
pub fn filler(len: usize, words: &[&str], first: usize) -> String {
    let mut text = String::with_capacity(len + 8);
    let mut i = first;
    while text.len() < len {
        text.push_str(words[i % words.len()]);
        i += 3;
    }
    text.truncate(len);
    text
}

/// What a connection received.
#[derive(Debug)]
pub enum Event {
    /// A room message; `stamp` is `None` for data that is not a benchmark
    /// payload, `offset` is roomcast's.
    Message {
        room: u32,
        stamp: Option<Stamp>,
        offset: Option<u64>,
    },
    /// roomcast's `reconnect` notice (a drain): come back after this long.
    Reconnect { after_ms: u64 },
    /// An `error` frame from the server (roomcast), with its code.
    ServerError(String),
    /// The connection ended: a close frame's code, or `None` without one.
    Closed(Option<u16>),
    /// Anything else (acks, pongs, presence, …).
    Other,
}

/// Where a roomcast room stood when the connection last saw it: what a
/// resume or a `join` with `since` needs.
#[derive(Clone, Debug, Default)]
pub struct RoomPosition {
    pub room: u32,
    pub offset: u64,
    pub epoch: String,
}

/// A roomcast session to resume.
#[derive(Clone, Debug)]
pub struct ResumeState {
    pub session: String,
    pub token: String,
    pub rooms: Vec<RoomPosition>,
}

/// What the server said when the connection opened.
#[derive(Clone, Debug, Default)]
pub struct Opened {
    /// roomcast: the session and its resume token.
    pub session: String,
    pub resume_token: String,
    /// roomcast: whether a resume was accepted.
    pub resumed: bool,
    /// roomcast: the rooms restored by the resume, with `recovered`.
    pub rooms: Vec<(RoomPosition, bool)>,
}

/// The answer to a join: roomcast's position (offset, epoch) and whether a
/// `since` was recovered.
#[derive(Clone, Debug, Default)]
pub struct Joined {
    pub position: RoomPosition,
    pub recovered: Option<bool>,
}

/// Opens connections of one protocol.
#[derive(Clone)]
pub struct Connector {
    pub protocol: Protocol,
    pool: DeflatePool,
    deflate: bool,
    /// Time allowed from the TCP connect to the protocol's hello answer.
    pub timeout: Duration,
}

impl Connector {
    pub fn new(protocol: Protocol, deflate: bool, timeout: Duration) -> Connector {
        Connector {
            protocol,
            pool: DeflatePool::new(16),
            deflate,
            timeout,
        }
    }

    /// Connects from `source` to `node`, says hello (resuming `resume` on
    /// roomcast) and returns the open connection.
    pub async fn open(
        &self,
        node: SocketAddr,
        source: Ipv4Addr,
        resume: Option<&ResumeState>,
    ) -> Result<(Conn, Opened)> {
        let options = net::ws_options(&self.pool, self.deflate);
        let opening = async {
            let stream = net::connect_from(source, node).await?;
            match self.protocol {
                Protocol::Roomcast => {
                    let (conn, opened) =
                        roomcast::RoomcastConn::open(node, stream, options, resume).await?;
                    Ok((Conn::Roomcast(conn), opened))
                }
                Protocol::SocketIo => {
                    let conn = socketio::SocketIoConn::open(node, stream, options).await?;
                    Ok((Conn::SocketIo(conn), Opened::default()))
                }
            }
        };
        tokio::time::timeout(self.timeout, opening)
            .await
            .map_err(|_| anyhow!("no hello answer from {node} within {:?}", self.timeout))?
    }
}

/// An open connection.
pub enum Conn {
    Roomcast(roomcast::RoomcastConn),
    SocketIo(socketio::SocketIoConn),
}

impl Conn {
    /// Joins `room` (with `since` on roomcast) and waits for the answer.
    /// Messages that arrive meanwhile are kept for [`Conn::next_event`].
    pub async fn join(&mut self, room: u32, since: Option<&RoomPosition>) -> Result<Joined> {
        match self {
            Conn::Roomcast(c) => c.join(room, since).await,
            Conn::SocketIo(c) => c.join(room).await,
        }
    }

    /// Publishes `payload` (a JSON object) to `room`, without asking for an
    /// acknowledgement.
    pub async fn publish(&mut self, room: u32, payload: &str) -> Result<()> {
        match self {
            Conn::Roomcast(c) => c.publish(room, payload).await,
            Conn::SocketIo(c) => c.publish(room, payload).await,
        }
    }

    /// The next event; an error when the socket failed.
    pub async fn next_event(&mut self) -> Result<Event> {
        match self {
            Conn::Roomcast(c) => c.next_event().await,
            Conn::SocketIo(c) => c.next_event().await,
        }
    }
}

/// The payload stamp of a message's `data`, when it is one.
#[derive(Deserialize)]
pub(crate) struct MaybeStamp {
    t: Option<u64>,
    p: Option<u32>,
    s: Option<u64>,
}

impl MaybeStamp {
    pub(crate) fn stamp(&self) -> Option<Stamp> {
        Some(Stamp {
            t: self.t?,
            p: self.p?,
            s: self.s?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_have_about_the_size_asked_for() {
        for size in [64, 100, 512, 4096] {
            let stamp = Stamp {
                t: 1_760_000_000_000_000,
                p: 3,
                s: 12345,
            };
            let p = payload(stamp, &padding(size));
            assert!(p.len().abs_diff(size) <= 8, "{size}: {}", p.len());
            let back: MaybeStamp = serde_json::from_str(&p).unwrap();
            assert_eq!(back.stamp(), Some(stamp));
        }
    }

    #[test]
    fn filler_is_as_long_as_asked_every_third_word_in_turn() {
        let words = ["a ", "b ", "c ", "d "];
        assert_eq!(filler(9, &words, 0), "a d c b a");
        assert_eq!(filler(4, &words, 1), "b a ");
        assert_eq!(filler(0, &words, 5), "");
    }

    #[test]
    fn room_names_round_trip() {
        assert_eq!(room_index(&room_name(42)), Some(42));
        assert_eq!(room_index("lobby"), None);
    }
}

//! What the client tells the application without being asked.
//!
//! Replies to commands come back as the commands' own futures; everything else
//! (room messages, direct messages, presence changes, the connection's ups and
//! downs, the server's reconnect notices, recoveries that failed) arrives, in
//! the order the client saw it, on one [`Events`] stream. One ordered stream
//! rather than callbacks keeps the ordering guarantees of the protocol visible
//! to the application: a `Connected { resumed: true }` is followed by the
//! messages missed while away, in offset order.
//!
//! The stream is unbounded so that an application awaiting a command's reply
//! while not reading events can never stall the connection (and with it the
//! heartbeat). The cost is that an application that stops reading grows the
//! buffer; read it.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use roomcast_protocol::{Data, ErrorCode, Member, ReconnectReason, ServerFrame};
use tokio::sync::mpsc;

use crate::Error;

/// A message published to a room.
#[derive(Debug, Clone, PartialEq)]
pub struct RoomMessage {
    pub room: String,
    /// The room's offset of this message, unique within `epoch`.
    pub offset: u64,
    pub epoch: String,
    pub data: Data,
    /// The publisher, absent for messages published over the HTTP API.
    pub from: Option<Member>,
}

/// A message sent to this user or session with `send`.
#[derive(Debug, Clone, PartialEq)]
pub struct DirectMessage {
    pub data: Data,
    pub from: Option<Member>,
}

/// The session a connection is attached to, from `welcome`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub session: String,
    pub user: String,
    /// The node that accepted the connection.
    pub node: String,
    /// The URL the connection went to.
    pub url: String,
    pub ping_interval: Duration,
}

/// Why a connection ended or an attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisconnectCause {
    /// The server closed the WebSocket with this code (see
    /// `roomcast_protocol::close`).
    Closed { code: u16, reason: String },
    /// The socket failed or ended without a close handshake.
    ConnectionLost(String),
    /// Nothing arrived for two ping intervals plus the slack.
    HeartbeatTimeout,
    /// The connection or its `hello` could not be completed.
    ConnectFailed(String),
    /// The server refused the token.
    Unauthorized(String),
    /// [`crate::Client::drop_connection_for_test`] cut the socket.
    DroppedForTest,
}

impl DisconnectCause {
    pub(crate) fn is_unauthorized(&self) -> bool {
        match self {
            DisconnectCause::Unauthorized(_) => true,
            DisconnectCause::Closed { code, .. } => *code == roomcast_protocol::close::UNAUTHORIZED,
            _ => false,
        }
    }
}

impl std::fmt::Display for DisconnectCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DisconnectCause::Closed { code, reason } if reason.is_empty() => {
                write!(f, "closed by the server with {code}")
            }
            DisconnectCause::Closed { code, reason } => {
                write!(f, "closed by the server with {code} ({reason})")
            }
            DisconnectCause::ConnectionLost(e) => write!(f, "connection lost: {e}"),
            DisconnectCause::HeartbeatTimeout => f.write_str("heartbeat lost"),
            DisconnectCause::ConnectFailed(e) => write!(f, "connect failed: {e}"),
            DisconnectCause::Unauthorized(e) => write!(f, "unauthorized: {e}"),
            DisconnectCause::DroppedForTest => f.write_str("connection dropped for a test"),
        }
    }
}

/// Where the client is in its connection life cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionState {
    /// An attempt to connect to `url` is under way (1-based `attempt` since
    /// the last working connection).
    Connecting { url: String, attempt: u32 },
    /// `welcome` arrived. `resumed` tells whether the previous session (its
    /// rooms and the messages missed meanwhile) was taken over; when it is
    /// false the client re-joins its rooms with `since` on its own.
    Connected { resumed: bool, session: SessionInfo },
    /// The connection (or an attempt) ended; attempt number `attempt` starts
    /// after `delay`.
    Reconnecting {
        attempt: u32,
        delay: Duration,
        cause: DisconnectCause,
    },
    /// The client stopped for good: `None` when it was closed, otherwise why
    /// it gave up. Commands now fail with [`Error::Closed`].
    Disconnected { error: Option<Error> },
}

/// Something that happened, in the order it happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The connection state changed.
    State(ConnectionState),
    /// A room message, never one at or below an offset already delivered for
    /// that room (within an epoch).
    Message(RoomMessage),
    /// A direct message.
    Direct(DirectMessage),
    /// Another connection joined a room this client joined with presence on.
    PresenceJoin { room: String, member: Member },
    /// Another connection left such a room.
    PresenceLeave { room: String, member: Member },
    /// The server announced it is about to close this connection (`reason`)
    /// and asked for a reconnect after `after`; the client complies.
    Reconnect {
        reason: ReconnectReason,
        after: Duration,
    },
    /// After a reconnect the room came back, but the messages missed meanwhile
    /// could not be replayed (new epoch or history trimmed): re-sync the room
    /// from the application's own source of truth. Live messages continue
    /// after `offset` in `epoch`.
    RecoveryFailed {
        room: String,
        offset: u64,
        epoch: String,
    },
    /// The node joined the connection to `room` by itself: a server-side
    /// subscription (the token's or the connect proxy's `subs`), announced by
    /// a `joined` without `id` right after `welcome`. The room is now one of
    /// the client's rooms, resumed after reconnects and de-duplicated like
    /// any other; live messages follow `offset`. `server` is true: the
    /// client's own joins answer [`crate::Client::join`] instead and are not
    /// reported here.
    Joined {
        room: String,
        offset: u64,
        epoch: String,
        server: bool,
    },
    /// Re-joining a room after a reconnect failed (for example `forbidden`
    /// now); the client no longer considers itself a member.
    RejoinFailed { room: String, error: Error },
    /// The node took this connection out of `room` (a `left` frame without
    /// `id`; `reason` `forbidden`: a refreshed token no longer allows the
    /// room). The client forgot the room: it is not resumed or joined again.
    Left {
        room: String,
        reason: Option<String>,
    },
    /// The token was refreshed on the live connection; it now expires at
    /// `expires_at` (Unix seconds). `server` is true when the node extended
    /// it by itself (its refresh proxy: a `refreshed` without `id`), false
    /// for the client's own refresh with the token provider.
    TokenRefreshed {
        expires_at: Option<u64>,
        server: bool,
    },
    /// An automatic token refresh failed (`attempt` in a row). With `last`
    /// no more are tried: the node closes the connection with 4401 when the
    /// token expires, and the client reconnects with a fresh token.
    TokenRefreshFailed {
        error: Error,
        attempt: u32,
        last: bool,
    },
    /// An `error` frame that answered no pending command (one without `id`,
    /// such as `rate_limited` for a publish sent without an id).
    ServerError { code: ErrorCode, message: String },
    /// A frame the client had no use for: typically the reply to a frame sent
    /// with [`crate::Client::raw_send`].
    Unmatched(ServerFrame),
}

/// The receiving end of a client's events; also a `futures::Stream`.
///
/// It ends (`None`) after the client has stopped and every event before that
/// has been read.
#[derive(Debug)]
pub struct Events {
    rx: mpsc::UnboundedReceiver<Event>,
}

impl Events {
    pub(crate) fn new(rx: mpsc::UnboundedReceiver<Event>) -> Self {
        Events { rx }
    }

    /// The next event, waiting for it.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// The next event if one is already there.
    pub fn try_recv(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }
}

impl futures::Stream for Events {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.rx.poll_recv(cx)
    }
}

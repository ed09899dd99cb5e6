//! The frames of protocol v1.
//!
//! Every frame is a map with a `type` string; [`ClientFrame`] holds what a
//! client may send, [`ServerFrame`] what a gateway sends. Optional fields are
//! left out when empty, and unknown fields are ignored on decode, which is
//! what lets the protocol grow without breaking older peers.

use serde::{Deserialize, Serialize};

use crate::{Data, ErrorCode};

/// A position in a room's stream: the last offset a client has, and the epoch
/// that offset belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Since {
    pub offset: u64,
    pub epoch: String,
}

/// One room a resuming client was in, with the last offset it received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeRoom {
    pub room: String,
    pub offset: u64,
    pub epoch: String,
    /// Whether to receive presence events in this room again (an addition
    /// to PROTOCOL.md; absent means false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence: Option<bool>,
}

/// The `resume` object of a `hello`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resume {
    pub session: String,
    pub token: String,
    #[serde(default)]
    pub rooms: Vec<ResumeRoom>,
}

/// The addressee of a `send`: exactly one of `user` or `session`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Target {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
}

impl Target {
    pub fn user(user: impl Into<String>) -> Self {
        Target {
            user: Some(user.into()),
            session: None,
        }
    }

    pub fn session(session: impl Into<String>) -> Self {
        Target {
            user: None,
            session: Some(session.into()),
        }
    }
}

/// A connection as others see it: in presence lists, presence events and the
/// `from` of messages. `info` is the token's `info` claim, when it has one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub user: String,
    pub session: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<Data>,
}

/// A room restored by a resume, as listed in `welcome`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomStatus {
    pub room: String,
    pub offset: u64,
    pub epoch: String,
    pub recovered: bool,
}

/// Why a node asks its clients to reconnect elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReconnectReason {
    Shutdown,
    Rebalance,
}

/// Frames a client sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    Hello {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume: Option<Resume>,
    },
    Join {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        room: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<Since>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        presence: Option<bool>,
    },
    Leave {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        room: String,
    },
    Publish {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        room: String,
        data: Data,
        /// Idempotency key: publishes to the room with the same key within
        /// the node's window are stored and delivered once
        /// ([`valid_idempotency_key`] says which keys are well formed).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
    },
    Send {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        to: Target,
        data: Data,
    },
    Presence {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        room: String,
    },
    Ping {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// A call to the application's backend (an addition to PROTOCOL.md):
    /// answered with `rpc_result` or `error`.
    Rpc {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        method: String,
        #[serde(default)]
        data: Data,
    },
    /// A new token for the connection (Additions 2026-12): same user only;
    /// answered with `refreshed` or `error`.
    Refresh {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        token: String,
    },
}

impl ClientFrame {
    /// The `id` the client attached, echoed on the reply or error.
    pub fn id(&self) -> Option<u64> {
        match self {
            ClientFrame::Hello { id, .. }
            | ClientFrame::Join { id, .. }
            | ClientFrame::Leave { id, .. }
            | ClientFrame::Publish { id, .. }
            | ClientFrame::Send { id, .. }
            | ClientFrame::Presence { id, .. }
            | ClientFrame::Ping { id }
            | ClientFrame::Rpc { id, .. }
            | ClientFrame::Refresh { id, .. } => *id,
        }
    }

    /// Every client frame `type`, in the order of the contract.
    pub const KINDS: [&'static str; 9] = [
        "hello", "join", "leave", "publish", "send", "presence", "ping", "rpc", "refresh",
    ];

    /// Sets the `id` the reply will carry.
    pub fn set_id(&mut self, new_id: Option<u64>) {
        match self {
            ClientFrame::Hello { id, .. }
            | ClientFrame::Join { id, .. }
            | ClientFrame::Leave { id, .. }
            | ClientFrame::Publish { id, .. }
            | ClientFrame::Send { id, .. }
            | ClientFrame::Presence { id, .. }
            | ClientFrame::Ping { id }
            | ClientFrame::Rpc { id, .. }
            | ClientFrame::Refresh { id, .. } => *id = new_id,
        }
    }

    /// The frame's `type`, as on the wire.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientFrame::Hello { .. } => "hello",
            ClientFrame::Join { .. } => "join",
            ClientFrame::Leave { .. } => "leave",
            ClientFrame::Publish { .. } => "publish",
            ClientFrame::Send { .. } => "send",
            ClientFrame::Presence { .. } => "presence",
            ClientFrame::Ping { .. } => "ping",
            ClientFrame::Rpc { .. } => "rpc",
            ClientFrame::Refresh { .. } => "refresh",
        }
    }
}

/// Frames a gateway sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Welcome {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        session: String,
        resume_token: String,
        user: String,
        node: String,
        ping_interval_ms: u64,
        resumed: bool,
        #[serde(default)]
        rooms: Vec<RoomStatus>,
        /// When the token that authorized the connection expires (Unix
        /// seconds); absent without a token or without `exp`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token_expires_at: Option<u64>,
    },
    Joined {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        room: String,
        offset: u64,
        epoch: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
    },
    Left {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        room: String,
        /// Why the node made the connection leave (no `id` then), e.g.
        /// `forbidden` after a refresh whose token no longer allows the room.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    Message {
        room: String,
        offset: u64,
        epoch: String,
        data: Data,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<Member>,
    },
    Direct {
        data: Data,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<Member>,
    },
    PresenceJoin {
        room: String,
        member: Member,
    },
    PresenceLeave {
        room: String,
        member: Member,
    },
    Presence {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        room: String,
        members: Vec<Member>,
    },
    Ack {
        id: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
        /// A publish whose key was seen before: answered as the first one
        /// was, nothing stored again. Absent when false.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        duplicate: bool,
    },
    Pong {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    Error {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        code: ErrorCode,
        message: String,
    },
    Reconnect {
        reason: ReconnectReason,
        after_ms: u64,
    },
    /// The backend's answer to an `rpc` (an addition to PROTOCOL.md).
    RpcResult {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        #[serde(default)]
        data: Data,
    },
    /// The answer to `refresh`: the connection's token now expires then
    /// (Unix seconds).
    Refreshed {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        expires_at: u64,
    },
}

impl ServerFrame {
    /// Every server frame `type`, in the order of the contract.
    pub const KINDS: [&'static str; 14] = [
        "welcome",
        "joined",
        "left",
        "message",
        "direct",
        "presence_join",
        "presence_leave",
        "presence",
        "ack",
        "pong",
        "error",
        "reconnect",
        "rpc_result",
        "refreshed",
    ];

    /// The `id` of the client command this frame answers, if it answers one.
    pub fn reply_id(&self) -> Option<u64> {
        match self {
            ServerFrame::Welcome { id, .. }
            | ServerFrame::Joined { id, .. }
            | ServerFrame::Left { id, .. }
            | ServerFrame::Presence { id, .. }
            | ServerFrame::Pong { id }
            | ServerFrame::Error { id, .. }
            | ServerFrame::RpcResult { id, .. }
            | ServerFrame::Refreshed { id, .. } => *id,
            ServerFrame::Ack { id, .. } => Some(*id),
            ServerFrame::Message { .. }
            | ServerFrame::Direct { .. }
            | ServerFrame::PresenceJoin { .. }
            | ServerFrame::PresenceLeave { .. }
            | ServerFrame::Reconnect { .. } => None,
        }
    }

    /// The frame's `type`, as on the wire.
    pub fn kind(&self) -> &'static str {
        match self {
            ServerFrame::Welcome { .. } => "welcome",
            ServerFrame::Joined { .. } => "joined",
            ServerFrame::Left { .. } => "left",
            ServerFrame::Message { .. } => "message",
            ServerFrame::Direct { .. } => "direct",
            ServerFrame::PresenceJoin { .. } => "presence_join",
            ServerFrame::PresenceLeave { .. } => "presence_leave",
            ServerFrame::Presence { .. } => "presence",
            ServerFrame::Ack { .. } => "ack",
            ServerFrame::Pong { .. } => "pong",
            ServerFrame::Error { .. } => "error",
            ServerFrame::Reconnect { .. } => "reconnect",
            ServerFrame::RpcResult { .. } => "rpc_result",
            ServerFrame::Refreshed { .. } => "refreshed",
        }
    }

    /// Shorthand for an `error` frame.
    pub fn error(id: Option<u64>, code: ErrorCode, message: impl Into<String>) -> Self {
        ServerFrame::Error {
            id,
            code,
            message: message.into(),
        }
    }
}

/// Longest idempotency key.
pub const MAX_IDEMPOTENCY_KEY: usize = 64;

/// An idempotency key is 1 to 64 characters of `A-Z a-z 0-9 _ . : -`.
pub fn valid_idempotency_key(key: &str) -> bool {
    (1..=MAX_IDEMPOTENCY_KEY).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

//! Error codes carried by `error` frames, and WebSocket close codes.
//!
//! Both lists are part of the public contract (PROTOCOL.md); the gateway maps
//! every failure onto exactly one of them, in one place.

use serde::{Deserialize, Serialize};

/// The `code` of an `error` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotJoined,
    RateLimited,
    TooLarge,
    LimitExceeded,
    Unavailable,
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 9] = [
        ErrorCode::BadRequest,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotJoined,
        ErrorCode::RateLimited,
        ErrorCode::TooLarge,
        ErrorCode::LimitExceeded,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// WebSocket close codes used by roomcast.
pub mod close {
    /// Normal closure (the client or the server is done).
    pub const NORMAL: u16 = 1000;
    /// The peer broke RFC 6455 framing (bad control frame, bad fragmentation).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text frame that is not valid UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A frame or a message (after inflation) larger than the limit.
    pub const TOO_LARGE: u16 = 1009;
    /// Internal error on the node.
    pub const INTERNAL: u16 = 1011;
    /// The node is shutting down or rebalancing: reconnect to any node and resume.
    pub const RESTART: u16 = 1012;
    /// Over capacity: try again later.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// Protocol violation: no `hello` first, or repeated malformed frames.
    pub const PROTOCOL_VIOLATION: u16 = 4400;
    /// Missing, invalid or expired token; also a connection whose token
    /// expired without a refresh (reason [`TOKEN_EXPIRED`]).
    pub const UNAUTHORIZED: u16 = 4401;
    /// The close reason of a connection whose token expired.
    pub const TOKEN_EXPIRED: &str = "token expired";
    /// The application's backend refused the connection (connect proxy).
    pub const FORBIDDEN: u16 = 4403;
    /// No `hello` in time, or heartbeat lost.
    pub const TIMEOUT: u16 = 4408;
    /// The user's connection limit (`limits.max_connections_per_user`) is reached.
    pub const USER_LIMIT: u16 = 4409;
    /// Rate limit exceeded repeatedly.
    pub const RATE_LIMITED: u16 = 4429;
    /// Slow consumer: the outbound queue overflowed.
    pub const SLOW_CONSUMER: u16 = 4508;
}

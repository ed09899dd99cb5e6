//! The client's one error type.
//!
//! Everything a command can fail with, and the reason a client stops for good,
//! is one of these variants. Errors the server sent in an `error` frame keep
//! their protocol [`ErrorCode`], so callers match on the codes the protocol
//! documents rather than on strings. Everything else says which side gave up:
//! the connection (`Disconnected`), the client itself (`Closed`), the clock
//! (`Timeout`) or the server's gatekeeper (`Unauthorized`).
//!
//! The type is `Clone` (transport failures are kept as text) because one error
//! may be handed both to a waiting command and to the event stream.

use std::time::Duration;

use roomcast_protocol::ErrorCode;

/// Why a command or the client as a whole failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The server answered the command with an `error` frame.
    #[error("{code}: {message}")]
    Server { code: ErrorCode, message: String },

    /// There was no live connection to carry the command, or it dropped before
    /// the reply came. The command may or may not have reached the server; it
    /// is not retried, except a publish (sent again with its idempotency key
    /// on the next connection, up to its attempts).
    #[error("not connected: the connection dropped or is being re-established")]
    Disconnected,

    /// The client has stopped: it was closed, every handle was dropped, or it
    /// gave up reconnecting.
    #[error("the client is closed")]
    Closed,

    /// No reply came within the request timeout.
    #[error("no reply within {0:?}")]
    Timeout(Duration),

    /// The server refused the token (close code 4401 or an `unauthorized`
    /// error on `hello`), and a fresh one did not help or could not be had.
    #[error("unauthorized: {0}")]
    Unauthorized(String),

    /// Every allowed connection attempt failed.
    #[error("gave up after {attempts} failed connection attempts; last: {last}")]
    GaveUp { attempts: u32, last: String },

    /// The builder was given something unusable (no URL, a `wss://` URL, …).
    #[error("invalid client configuration: {0}")]
    Config(String),

    /// The server answered with a frame of a type the command does not expect.
    #[error("unexpected reply: {0}")]
    UnexpectedReply(String),

    /// A publish key that is not 1 to 64 characters of `A-Z a-z 0-9 _ . : -`.
    #[error("invalid publish key: {0:?}")]
    InvalidKey(String),

    /// The token provider failed (during a refresh).
    #[error("token provider failed: {0}")]
    TokenProvider(String),

    /// The frame could not be encoded (for example `data` that MessagePack
    /// cannot carry).
    #[error("cannot encode frame: {0}")]
    Encode(String),
}

impl Error {
    /// The protocol error code, for errors the server reported.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Server { code, .. } => Some(*code),
            _ => None,
        }
    }
}

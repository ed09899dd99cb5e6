//! The roomcast client protocol, version 1.
//!
//! This crate is the one place where the wire contract lives: the frames a
//! client and a gateway exchange ([`frame`]), how they are encoded in the two
//! subprotocols ([`codec`]), and the error codes and close codes both sides
//! agree on ([`error`]). The gateway, the client library, the load generator
//! and the tests all depend on it, so a change here is a change of the
//! contract: extend with optional fields and new frame types, never alter.

pub mod codec;
pub mod envelope;
pub mod error;
pub mod frame;

pub use codec::{Codec, DecodeError};
pub use error::{close, ErrorCode};
pub use frame::{
    valid_idempotency_key, ClientFrame, Member, ReconnectReason, Resume, ResumeRoom, RoomStatus,
    ServerFrame, Since, Target, MAX_IDEMPOTENCY_KEY,
};

/// Room data: any JSON-compatible value. Both codecs carry the same value, so
/// a message published by a JSON client reaches MessagePack clients unchanged.
pub type Data = serde_json::Value;

//! The two encodings of protocol v1.
//!
//! `roomcast.v1.json` sends one JSON object per text frame;
//! `roomcast.v1.msgpack` one MessagePack map per binary frame, with the same
//! field names. Both decoders bound nesting depth, so a hostile frame cannot
//! exhaust the stack, and both report the `id` of a frame they could not
//! decode whenever it can be found, so the `error` reply can echo it.

use bytes::Bytes;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Deepest nesting a decoder accepts (frame plus `data`).
pub const MAX_DEPTH: usize = 64;

/// Subprotocol name of the JSON codec.
pub const JSON_SUBPROTOCOL: &str = "roomcast.v1.json";
/// Subprotocol name of the MessagePack codec.
pub const MSGPACK_SUBPROTOCOL: &str = "roomcast.v1.msgpack";

/// Which encoding a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    Json,
    MsgPack,
}

/// A frame that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DecodeError {
    /// The frame's `id`, when the frame had a readable one.
    pub id: Option<u64>,
    /// What was wrong, in words fit for the `error` frame.
    pub message: String,
}

impl Codec {
    /// Both codecs, JSON first.
    pub const ALL: [Codec; 2] = [Codec::Json, Codec::MsgPack];

    /// The subprotocol name this codec is negotiated under.
    pub fn subprotocol(self) -> &'static str {
        match self {
            Codec::Json => JSON_SUBPROTOCOL,
            Codec::MsgPack => MSGPACK_SUBPROTOCOL,
        }
    }

    /// Picks the codec from a `Sec-WebSocket-Protocol` offer: the first name we
    /// know wins; no offer at all means JSON. `None` means the client offered
    /// only names we do not speak.
    pub fn from_offer(offer: Option<&str>) -> Option<Codec> {
        let Some(offer) = offer else {
            return Some(Codec::Json);
        };
        offer.split(',').map(str::trim).find_map(|name| match name {
            JSON_SUBPROTOCOL => Some(Codec::Json),
            MSGPACK_SUBPROTOCOL => Some(Codec::MsgPack),
            _ => None,
        })
    }

    /// Index of this codec in per-codec arrays (`[json, msgpack]`).
    pub fn index(self) -> usize {
        match self {
            Codec::Json => 0,
            Codec::MsgPack => 1,
        }
    }

    /// True when frames of this codec travel as WebSocket binary frames.
    pub fn is_binary(self) -> bool {
        matches!(self, Codec::MsgPack)
    }

    /// Encodes one frame. Encoding our own frame types cannot fail; a failure
    /// here is a bug, reported as a string rather than a panic.
    pub fn encode<T: Serialize>(self, frame: &T) -> Result<Bytes, String> {
        match self {
            Codec::Json => serde_json::to_vec(frame)
                .map(Bytes::from)
                .map_err(|e| e.to_string()),
            Codec::MsgPack => rmp_serde::to_vec_named(frame)
                .map(Bytes::from)
                .map_err(|e| e.to_string()),
        }
    }

    /// Decodes one frame of type `T` (a [`crate::ClientFrame`] on a gateway, a
    /// [`crate::ServerFrame`] in a client).
    pub fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T, DecodeError> {
        let result = match self {
            Codec::Json => decode_json(bytes),
            Codec::MsgPack => decode_msgpack(bytes),
        };
        result.map_err(|message| DecodeError {
            id: self.peek_id(bytes),
            message,
        })
    }

    /// Reads just the `id` of a frame that failed to decode as a whole.
    fn peek_id(self, bytes: &[u8]) -> Option<u64> {
        #[derive(Deserialize)]
        struct Peek {
            id: Option<u64>,
        }
        let peek: Result<Peek, String> = match self {
            Codec::Json => decode_json(bytes),
            Codec::MsgPack => decode_msgpack(bytes),
        };
        peek.ok().and_then(|p| p.id)
    }
}

fn decode_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    if depth_exceeds_json(bytes, MAX_DEPTH) {
        return Err(format!("nesting deeper than {MAX_DEPTH} levels"));
    }
    serde_json::from_slice(bytes).map_err(|e| describe(e.to_string()))
}

fn decode_msgpack<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
    // rmp-serde refuses the container that brings its counter down to zero, so
    // a limit of N admits N - 1 nested containers; `+ 1` makes MessagePack
    // admit exactly MAX_DEPTH, like the JSON check, so a frame one codec
    // accepts can always be re-encoded for a peer of the other.
    de.set_max_depth(MAX_DEPTH + 1);
    T::deserialize(&mut de).map_err(|e| describe(e.to_string()))
}

/// Counts bracket nesting of a JSON text without parsing it, skipping strings.
/// serde_json's own recursion limit (128) would also stop a deep document, but
/// a tagged frame is buffered once before it is typed, so we keep our own,
/// lower bound in front of it.
fn depth_exceeds_json(bytes: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// serde's messages for internally tagged enums mention Rust names; make the
/// common ones read as protocol words.
fn describe(message: String) -> String {
    if message.contains("missing field `type`") {
        "frame has no `type`".to_string()
    } else if message.starts_with("unknown variant") {
        format!(
            "unknown frame type: {}",
            message.split('`').nth(1).unwrap_or("?")
        )
    } else {
        message
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ClientFrame, ServerFrame};

    #[test]
    fn no_offer_means_json_and_unknown_offers_are_refused() {
        assert_eq!(Codec::from_offer(None), Some(Codec::Json));
        assert_eq!(
            Codec::from_offer(Some("chat, roomcast.v1.msgpack")),
            Some(Codec::MsgPack)
        );
        assert_eq!(Codec::from_offer(Some("chat")), None);
    }

    #[test]
    fn an_undecodable_frame_still_reports_its_id() {
        let err = Codec::Json
            .decode::<ClientFrame>(br#"{"type":"publish","id":7}"#)
            .unwrap_err();
        assert_eq!(err.id, Some(7));
        assert!(err.message.contains("room"), "{}", err.message);
    }

    #[test]
    fn unknown_types_are_named() {
        let err = Codec::Json
            .decode::<ClientFrame>(br#"{"type":"teleport","id":1}"#)
            .unwrap_err();
        assert_eq!(err.message, "unknown frame type: teleport");
        assert_eq!(err.id, Some(1));
    }

    #[test]
    fn deep_nesting_is_rejected_without_overflowing_the_stack() {
        let deep = format!(
            r#"{{"type":"publish","room":"a","data":{}1{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert!(Codec::Json.decode::<ClientFrame>(deep.as_bytes()).is_err());

        // MessagePack: 100,000 nested one-element arrays.
        let mut bytes = vec![0x83];
        bytes.extend(rmp_serde::to_vec("type").unwrap());
        bytes.extend(rmp_serde::to_vec("publish").unwrap());
        bytes.extend(rmp_serde::to_vec("room").unwrap());
        bytes.extend(rmp_serde::to_vec("a").unwrap());
        bytes.extend(rmp_serde::to_vec("data").unwrap());
        bytes.extend(std::iter::repeat_n(0x91u8, 100_000));
        bytes.push(0x01);
        assert!(Codec::MsgPack.decode::<ClientFrame>(&bytes).is_err());
    }

    #[test]
    fn json_published_data_decodes_identically_from_msgpack() {
        let frame = ServerFrame::Message {
            room: "r".into(),
            offset: 3,
            epoch: "e".into(),
            data: serde_json::json!({"text": "hi", "n": [1, -2, 3.5, null, true]}),
            from: None,
        };
        for codec in Codec::ALL {
            let bytes = codec.encode(&frame).unwrap();
            assert_eq!(codec.decode::<ServerFrame>(&bytes).unwrap(), frame);
        }
    }
}

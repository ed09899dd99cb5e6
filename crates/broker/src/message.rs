//! A room message as the broker stores and delivers it.
//!
//! The encoded `message` frame is built at most once per codec per node and
//! then shared (as `Bytes`) by every member the message goes to, and by every
//! replay from history: fan-out costs no encoding and no allocation per member.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use roomcast_protocol::{Codec, Data, Member};
use serde::Serialize;

#[derive(Debug)]
pub struct RoomMessage {
    pub room: Arc<str>,
    pub offset: u64,
    pub epoch: Arc<str>,
    pub data: Data,
    pub from: Option<Member>,
    /// Wall-clock publish time in microseconds since the Unix epoch, for the
    /// publish-to-deliver latency metric.
    pub published_at_us: u64,
    /// W3C `traceparent` of the publish, when it was traced: the receiving
    /// node's delivery span becomes its child.
    pub trace: Option<String>,
    encoded: [OnceLock<Bytes>; 2],
}

/// The `message` frame, borrowed: the same fields as
/// `ServerFrame::Message`, so both encode identically.
#[derive(Serialize)]
struct MessageFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    room: &'a str,
    offset: u64,
    epoch: &'a str,
    data: &'a Data,
    #[serde(skip_serializing_if = "Option::is_none")]
    from: Option<&'a Member>,
}

impl RoomMessage {
    pub fn new(
        room: Arc<str>,
        offset: u64,
        epoch: Arc<str>,
        data: Data,
        from: Option<Member>,
        published_at_us: u64,
    ) -> Self {
        RoomMessage {
            room,
            offset,
            epoch,
            data,
            from,
            published_at_us,
            trace: None,
            encoded: [OnceLock::new(), OnceLock::new()],
        }
    }

    /// The same message with the publish's trace context.
    pub fn with_trace(mut self, trace: Option<String>) -> Self {
        self.trace = trace;
        self
    }

    /// The encoded `message` frame for `codec`, built on first use.
    pub fn frame(&self, codec: Codec) -> Bytes {
        self.encoded[codec.index()]
            .get_or_init(|| {
                let frame = MessageFrame {
                    kind: "message",
                    room: &self.room,
                    offset: self.offset,
                    epoch: &self.epoch,
                    data: &self.data,
                    from: self.from.as_ref(),
                };
                // Our own frame of plain JSON values always encodes.
                codec.encode(&frame).unwrap_or_default()
            })
            .clone()
    }
}

/// Microseconds since the Unix epoch, now.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use roomcast_protocol::ServerFrame;

    #[test]
    fn the_shared_frame_decodes_as_a_message_in_both_codecs() {
        let msg = RoomMessage::new(
            "lobby".into(),
            7,
            "ep".into(),
            serde_json::json!({"t": "hi"}),
            Some(Member {
                user: "u".into(),
                session: "s".into(),
                info: None,
            }),
            0,
        );
        for codec in Codec::ALL {
            let frame: ServerFrame = codec.decode(&msg.frame(codec)).unwrap();
            assert_eq!(
                frame,
                ServerFrame::Message {
                    room: "lobby".into(),
                    offset: 7,
                    epoch: "ep".into(),
                    data: serde_json::json!({"t": "hi"}),
                    from: msg.from.clone(),
                }
            );
        }
    }
}

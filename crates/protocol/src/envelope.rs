//! The inter-node envelope: what travels between nodes through Redis, and
//! what a room's history stores.
//!
//! It is a MessagePack map (rmp-serde, named fields). `offset` and `epoch`
//! come first and have fixed widths (a `uint 64` and a 16-byte `str`), so
//! the broker's publish script can write the offset it assigns, and the
//! room's epoch, into an envelope the node encoded beforehand: one encoding,
//! stored and published atomically, decoded by any node with plain rmp-serde.
//! `trace` carries a W3C `traceparent`, so a publish on one node and its
//! delivery on another are one trace.

use serde::{Deserialize, Serialize};

use crate::{Data, Member, Target};

/// Length of every epoch string.
pub const EPOCH_LEN: usize = 16;
/// Byte position of the 8 offset bytes inside an encoded envelope.
pub const OFFSET_POS: usize = 1 + 7 + 1;
/// Byte position of the 16 epoch bytes inside an encoded envelope.
pub const EPOCH_POS: usize = OFFSET_POS + 8 + 6 + 1;

/// What an envelope carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A room message (has offset, epoch, data).
    Message,
    /// A member joined a room (has `member`).
    PresenceJoin,
    /// A member left a room (has `member`).
    PresenceLeave,
    /// A direct message to `target` (has data).
    Direct,
    /// Close the connections of `target` (API disconnect).
    Disconnect,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub offset: u64,
    pub epoch: String,
    pub kind: Kind,
    pub room: String,
    /// Node the envelope was made on.
    pub node: String,
    pub data: Option<Data>,
    pub from: Option<Member>,
    pub member: Option<Member>,
    pub target: Option<Target>,
    /// Publish time, microseconds since the Unix epoch.
    pub ts: u64,
    /// W3C `traceparent` of the publishing span, if traced.
    pub trace: Option<String>,
}

/// The fields after `offset` and `epoch`, in order.
#[derive(Serialize)]
struct Rest<'a> {
    kind: Kind,
    room: &'a str,
    node: &'a str,
    data: &'a Option<Data>,
    from: &'a Option<Member>,
    member: &'a Option<Member>,
    target: &'a Option<Target>,
    ts: u64,
    trace: &'a Option<String>,
}

/// Why an envelope could not be read.
#[derive(Debug, thiserror::Error)]
#[error("bad envelope: {0}")]
pub struct EnvelopeError(pub String);

impl Envelope {
    /// Encodes with the fixed-width head. An epoch that is not exactly
    /// [`EPOCH_LEN`] bytes is written as zeros (the publish script fills it).
    pub fn encode(&self) -> Result<Vec<u8>, EnvelopeError> {
        let rest = rmp_serde::to_vec_named(&Rest {
            kind: self.kind,
            room: &self.room,
            node: &self.node,
            data: &self.data,
            from: &self.from,
            member: &self.member,
            target: &self.target,
            ts: self.ts,
            trace: &self.trace,
        })
        .map_err(|e| EnvelopeError(e.to_string()))?;
        // `rest` is a fixmap of 9 entries: replace its header with ours.
        if rest.first() != Some(&0x89) {
            return Err(EnvelopeError("unexpected map header".into()));
        }
        let mut out = Vec::with_capacity(rest.len() + 40);
        out.push(0x8b); // fixmap, 11 entries
        out.push(0xa6);
        out.extend_from_slice(b"offset");
        out.push(0xcf);
        out.extend_from_slice(&self.offset.to_be_bytes());
        out.push(0xa5);
        out.extend_from_slice(b"epoch");
        out.push(0xb0); // fixstr, 16 bytes
        if self.epoch.len() == EPOCH_LEN {
            out.extend_from_slice(self.epoch.as_bytes());
        } else {
            out.extend_from_slice(&[b'0'; EPOCH_LEN]);
        }
        out.extend_from_slice(&rest[1..]);
        debug_assert_eq!(&out[OFFSET_POS - 1..OFFSET_POS], &[0xcf]);
        debug_assert_eq!(&out[EPOCH_POS - 1..EPOCH_POS], &[0xb0]);
        Ok(out)
    }

    pub fn decode(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
        let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
        de.set_max_depth(crate::codec::MAX_DEPTH + 4);
        Envelope::deserialize(&mut de).map_err(|e| EnvelopeError(e.to_string()))
    }

    /// An envelope of `kind` about `room`, with no offset yet.
    pub fn new(kind: Kind, room: &str, node: &str, ts: u64) -> Envelope {
        Envelope {
            offset: 0,
            epoch: String::new(),
            kind,
            room: room.to_string(),
            node: node.to_string(),
            data: None,
            from: None,
            member: None,
            target: None,
            ts,
            trace: None,
        }
    }
}

/// Redis names. A room's keys and channel share the hash tag `{room}`, so in
/// a Redis Cluster they live in one slot (room names cannot contain braces).
pub mod names {
    /// Hash with the room's `e`poch and last `o`ffset.
    pub fn room_meta(room: &str) -> String {
        format!("rc:{{{room}}}:meta")
    }
    /// Stream with the room's history; entry ids are `<offset>-0`.
    pub fn room_history(room: &str) -> String {
        format!("rc:{{{room}}}:hist")
    }
    /// Channel of the room's envelopes.
    pub fn room_channel(room: &str) -> String {
        format!("rc:{{{room}}}:ch")
    }
    /// A publish's idempotency key in the room: the offset and epoch it got
    /// (keys hold no braces, so the room's hash tag decides the slot).
    pub fn room_idempotency_key(room: &str, key: &str) -> String {
        format!("rc:{{{room}}}:idem:{key}")
    }
    /// Channel of envelopes addressed to one node.
    pub fn node_channel(node: &str) -> String {
        format!("rc:{{node:{node}}}:ch")
    }
    /// Channel every node listens to (fallback routing).
    pub const ALL_NODES: &str = "rc:{all}:ch";
    /// Hash of every node's latest stats record, by node id (the cluster
    /// view of `/api/nodes` and the admin page).
    pub const NODE_STATS: &str = "rc:{nodes}:stats";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_has_fixed_positions_and_patching_it_keeps_a_valid_envelope() {
        let mut env = Envelope::new(Kind::Message, "lobby", "node-a", 42);
        env.data = Some(serde_json::json!({"t": [1, 2.5, "x"]}));
        env.trace = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
        let mut bytes = env.encode().unwrap();
        // What the publish script does:
        bytes[OFFSET_POS..OFFSET_POS + 8].copy_from_slice(&77u64.to_be_bytes());
        bytes[EPOCH_POS..EPOCH_POS + EPOCH_LEN].copy_from_slice(b"0123456789abcdef");
        let back = Envelope::decode(&bytes).unwrap();
        assert_eq!(back.offset, 77);
        assert_eq!(back.epoch, "0123456789abcdef");
        env.offset = 77;
        env.epoch = "0123456789abcdef".into();
        assert_eq!(back, env);
    }
}

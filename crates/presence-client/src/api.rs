//! The presence service's HTTP API types, shared by the server and by the
//! gateway-side `PresenceClient` (`client.rs` beside this file), so the two cannot drift.
//!
//! Everything is JSON. A gateway reports what happens to its connections as
//! a stream of [`Op`]s (connect, join, leave, disconnect, handoff) in
//! [`SyncRequest`]s; the service answers with its own incarnation and
//! whether it needs the node's whole state again ([`SyncResponse`]).
//! `docs/presence.md` describes every call.

use serde::{Deserialize, Serialize};

use roomcast_protocol::Data;
pub use roomcast_protocol::Member;

/// One change to a gateway's connections, in the order the gateway saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// A session is now held by the sending node (a new connection, or a
    /// resumed one: ownership moves here, rooms are kept).
    Connect {
        session: String,
        user: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        info: Option<Data>,
    },
    /// The session's connection is gone for good: it leaves all its rooms.
    Disconnect { session: String },
    /// The session joined a room.
    Join { session: String, room: String },
    /// The session left a room.
    Leave { session: String, room: String },
    /// The node hands the session over (drain): keep it and its rooms for
    /// `grace_ms`, waiting for a `connect` from any node.
    Handoff { session: String, grace_ms: u64 },
}

impl Op {
    /// The session the op is about.
    pub fn session(&self) -> &str {
        match self {
            Op::Connect { session, .. }
            | Op::Disconnect { session }
            | Op::Join { session, .. }
            | Op::Leave { session, .. }
            | Op::Handoff { session, .. } => session,
        }
    }

    pub fn connect(session: impl Into<String>, user: impl Into<String>, info: Option<Data>) -> Op {
        Op::Connect {
            session: session.into(),
            user: user.into(),
            info,
        }
    }

    pub fn disconnect(session: impl Into<String>) -> Op {
        Op::Disconnect {
            session: session.into(),
        }
    }

    pub fn join(session: impl Into<String>, room: impl Into<String>) -> Op {
        Op::Join {
            session: session.into(),
            room: room.into(),
        }
    }

    pub fn leave(session: impl Into<String>, room: impl Into<String>) -> Op {
        Op::Leave {
            session: session.into(),
            room: room.into(),
        }
    }

    pub fn handoff(session: impl Into<String>, grace_ms: u64) -> Op {
        Op::Handoff {
            session: session.into(),
            grace_ms,
        }
    }
}

/// `POST /v1/nodes/{node}/sync`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRequest {
    /// Identifies this run of the node; a new one means the node restarted.
    pub incarnation: String,
    /// How long the node's lease lasts from now; absent: the service default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_ms: Option<u64>,
    /// `ops` describe every live session of the node (connect + join ops):
    /// they replace what the service knew about it.
    #[serde(default)]
    pub full: bool,
    /// Sequence number of the first op of `ops` (of the first op after the
    /// snapshot, for a full sync). Lets the service skip ops it already
    /// applied when a response was lost and the batch is sent again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(default)]
    pub ops: Vec<Op>,
}

/// The answer to a sync.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncResponse {
    /// The presence process's incarnation (changes when it restarts).
    pub presence: String,
    /// The service does not know this node (or knows another incarnation of
    /// it): the ops were not applied; send a full sync.
    pub need_full: bool,
}

/// `GET /v1/rooms/{room}/members`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembersResponse {
    pub room: String,
    pub members: Vec<Member>,
}

/// `POST /v1/lookup`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LookupRequest {
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default)]
    pub sessions: Vec<String>,
}

/// Which node holds a session.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Owner {
    pub session: String,
    pub user: String,
    pub node: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LookupResponse {
    pub sessions: Vec<Owner>,
}

/// `PUT /v1/sessions/{session}`: park a session record for a later resume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParkRequest {
    pub record: Data,
    pub ttl_ms: u64,
    /// The session's user: the record is then also listed under that user,
    /// for `POST /v1/users/{user}/end`. Absent from older gateways.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The node whose connection of the session ended. The park is then
    /// refused (409 `superseded`) while another node holds a claim on the
    /// session (see [`TakeManyRequest::claims`]): the session went on over
    /// there, and a parked copy would let it resume twice. Absent (older
    /// gateways, and the mark of an ended session): stored unconditionally.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// `POST /v1/park`: park several session records at once, each as by
/// `PUT /v1/sessions/{session}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParkManyRequest {
    /// The node whose connections of these sessions ended (see
    /// [`ParkRequest::node`]); absent: stored whatever the claims.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub parks: Vec<ParkItem>,
}

/// One record of a [`ParkManyRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParkItem {
    pub session: String,
    pub record: Data,
    pub ttl_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// The sessions whose park was refused because another node claimed them;
/// every other record of the request is stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParkManyResponse {
    #[serde(default)]
    pub superseded: Vec<String>,
}

/// `POST /v1/users/{user}/end`: replace every parked record of the user's
/// sessions with `record`, kept `ttl_ms` (the gateway's mark of a session
/// the API ended).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndUserRequest {
    pub record: Data,
    pub ttl_ms: u64,
}

/// How many parked records were replaced.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndUserResponse {
    pub ended: u64,
}

/// `POST /v1/sessions/{session}/take`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TakeResponse {
    pub record: Data,
}

/// `POST /v1/take`: take the parked records of several sessions at once.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TakeManyRequest {
    pub sessions: Vec<String>,
    /// Sessions taken as well (they may be in `sessions` too, as the
    /// gateway's client lists them for services older than claims), and
    /// claimed for `node` for `claim_ms`: the
    /// node resumes them on the token's word (another node still lists
    /// them), so until it parks one itself, or the claim runs out, a park
    /// of it by any other node is refused. The claim is set before the
    /// take, so a park racing it either lands first (and is taken here) or
    /// is refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub claims: Vec<String>,
    /// Sessions taken as well (listed in `sessions` too, for older
    /// services) and claimed as `claims` are, but only if the service
    /// lists them under the given user, on any node: a gateway resuming a
    /// session asks this way, and learns in one request whether it was
    /// parked, whether it resumes on the token's word, and which nodes to
    /// tell it moved. Answered in [`TakeManyResponse::listed`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub claims_if_listed: Vec<ListedClaim>,
    /// The claiming node; required with `claims` or `claims_if_listed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// How long the claims last; required with `claims` or `claims_if_listed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_ms: Option<u64>,
    /// A record equal to this one is answered but left in place, so that
    /// it answers every take until it expires, not the first alone (the
    /// gateway's mark of a session the API ended: a second resume must be
    /// refused as the first was). Absent: every record found is taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep: Option<Data>,
    /// Names this take, so that the same request sent again (the gateway
    /// retries a take whose answer it did not get) is answered as the
    /// first was, for 30 s, instead of finding the records gone: taken by
    /// the request whose answer was lost. Absent (older gateways): no
    /// answer is kept, and a lost answer loses the records it carried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// One session of [`TakeManyRequest::claims_if_listed`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListedClaim {
    pub session: String,
    /// The user the session must be listed under to be claimed.
    pub user: String,
}

/// The records found, by session; a session with nothing parked is absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TakeManyResponse {
    pub records: std::collections::BTreeMap<String, Data>,
    /// Claimed sessions that another node had claimed before this request
    /// (it resumed the session on the token's word earlier), by session:
    /// that node, whose claim this one replaced. It may still hold the
    /// session live, and should be told it moved. Absent from older
    /// services.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub displaced: std::collections::BTreeMap<String, String>,
    /// For every session of `claims_if_listed`: the nodes listing it under
    /// its user when it was asked (empty: listed nowhere, so not claimed).
    /// Absent from services older than `claims_if_listed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listed: Option<std::collections::BTreeMap<String, Vec<String>>>,
}

/// Body of every non-2xx answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// `bad_request`, `unauthorized`, `not_found`, `superseded`,
    /// `unavailable`.
    pub error: String,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_have_the_documented_json_shape() {
        let op: Op =
            serde_json::from_str(r#"{"op":"connect","session":"s","user":"u","info":{"n":1}}"#)
                .unwrap();
        assert_eq!(op, Op::connect("s", "u", Some(serde_json::json!({"n": 1}))));
        assert_eq!(
            serde_json::to_string(&Op::handoff("s", 500)).unwrap(),
            r#"{"op":"handoff","session":"s","grace_ms":500}"#
        );
        let req: SyncRequest = serde_json::from_str(r#"{"incarnation":"i"}"#).unwrap();
        assert!(!req.full && req.ops.is_empty() && req.lease_ms.is_none());
    }
}

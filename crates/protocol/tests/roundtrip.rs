//! Property tests: every frame of protocol v1 survives both codecs.
//!
//! For arbitrary [`ClientFrame`]s and [`ServerFrame`]s (every variant, every
//! optional field both absent and present, arbitrary `data`), each codec must
//! give back the frame it encoded, re-encoding must be byte-stable, and a
//! frame must survive a trip through one codec and then the other, since the
//! gateway relays what a JSON client publishes to MessagePack clients and the
//! other way round.

use std::fmt::Debug;

use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use roomcast_protocol::codec::MAX_DEPTH;
use roomcast_protocol::{
    ClientFrame, Codec, ErrorCode, Member, ReconnectReason, Resume, ResumeRoom, RoomStatus,
    ServerFrame, Since, Target,
};
use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;

// ---------------------------------------------------------------------------
// The frame types PROTOCOL.md lists, and a guard that none is missed.
// ---------------------------------------------------------------------------

/// Client → server `type`s, in the order of PROTOCOL.md.
const CLIENT_TYPES: [&str; 9] = [
    "hello", "join", "leave", "publish", "send", "presence", "ping", "rpc", "refresh",
];

/// Server → client `type`s, in the order of PROTOCOL.md.
const SERVER_TYPES: [&str; 14] = [
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

/// Index of a client frame's variant in [`CLIENT_TYPES`].
///
/// There is deliberately no `_` arm: adding a variant to `ClientFrame` stops
/// this file compiling until the variant is added here, to `CLIENT_TYPES` and
/// to [`client_frame`] (the coverage test then checks it is generated).
fn client_index(frame: &ClientFrame) -> usize {
    match frame {
        ClientFrame::Hello { .. } => 0,
        ClientFrame::Join { .. } => 1,
        ClientFrame::Leave { .. } => 2,
        ClientFrame::Publish { .. } => 3,
        ClientFrame::Send { .. } => 4,
        ClientFrame::Presence { .. } => 5,
        ClientFrame::Ping { .. } => 6,
        ClientFrame::Rpc { .. } => 7,
        ClientFrame::Refresh { .. } => 8,
    }
}

/// Index of a server frame's variant in [`SERVER_TYPES`]; no `_` arm, as in
/// [`client_index`].
fn server_index(frame: &ServerFrame) -> usize {
    match frame {
        ServerFrame::Welcome { .. } => 0,
        ServerFrame::Joined { .. } => 1,
        ServerFrame::Left { .. } => 2,
        ServerFrame::Message { .. } => 3,
        ServerFrame::Direct { .. } => 4,
        ServerFrame::PresenceJoin { .. } => 5,
        ServerFrame::PresenceLeave { .. } => 6,
        ServerFrame::Presence { .. } => 7,
        ServerFrame::Ack { .. } => 8,
        ServerFrame::Pong { .. } => 9,
        ServerFrame::Error { .. } => 10,
        ServerFrame::Reconnect { .. } => 11,
        ServerFrame::RpcResult { .. } => 12,
        ServerFrame::Refreshed { .. } => 13,
    }
}

// ---------------------------------------------------------------------------
// Strategies.
// ---------------------------------------------------------------------------

/// Any Unicode text, short: control characters, quotes, backslashes, NUL,
/// astral-plane characters and the empty string all come up.
fn text() -> impl Strategy<Value = String> {
    vec(any::<char>(), 0..12).prop_map(String::from_iter)
}

fn opt_id() -> impl Strategy<Value = Option<u64>> {
    option::of(any::<u64>())
}

/// Any finite float. The workspace builds serde_json with `float_roundtrip`,
/// so JSON text reads back bit-exact (without it about a third of random
/// f64s came back one ulp off; see docs/fuzzing.md).
fn float() -> impl Strategy<Value = f64> {
    any::<f64>().prop_filter("finite", |f| f.is_finite())
}

/// A JSON leaf: null, bool, integers over the whole i64 and u64 ranges,
/// finite floats, strings.
fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        float().prop_map(Value::from),
        text().prop_map(Value::String),
    ]
}

/// Arbitrary room `data`: leaves nested in arrays and objects, at most 4
/// containers deep (the depth limit itself has its own test below).
fn data() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            vec((text(), inner), 0..6).prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
        ]
    })
}

/// A member's `info`. `Some(Value::Null)` is left out: a null `info` reads
/// back as an absent one, which `null_info_reads_as_absent` pins down.
fn info() -> impl Strategy<Value = Option<Value>> {
    option::of(data().prop_filter("null info reads back as None", |v| !v.is_null()))
}

fn member() -> impl Strategy<Value = Member> {
    (text(), text(), info()).prop_map(|(user, session, info)| Member {
        user,
        session,
        info,
    })
}

fn target() -> impl Strategy<Value = Target> {
    // Both, one or none: the type allows all four, so all four must survive.
    (option::of(text()), option::of(text())).prop_map(|(user, session)| Target { user, session })
}

fn since() -> impl Strategy<Value = Since> {
    (any::<u64>(), text()).prop_map(|(offset, epoch)| Since { offset, epoch })
}

fn resume() -> impl Strategy<Value = Resume> {
    let room = (text(), any::<u64>(), text(), option::of(any::<bool>())).prop_map(
        |(room, offset, epoch, presence)| ResumeRoom {
            room,
            offset,
            epoch,
            presence,
        },
    );
    (text(), text(), vec(room, 0..4)).prop_map(|(session, token, rooms)| Resume {
        session,
        token,
        rooms,
    })
}

fn room_status() -> impl Strategy<Value = RoomStatus> {
    (text(), any::<u64>(), text(), any::<bool>()).prop_map(|(room, offset, epoch, recovered)| {
        RoomStatus {
            room,
            offset,
            epoch,
            recovered,
        }
    })
}

/// Every variant of [`ClientFrame`], with equal weight.
fn client_frame() -> impl Strategy<Value = ClientFrame> {
    prop_oneof![
        (opt_id(), option::of(text()), option::of(resume()))
            .prop_map(|(id, token, resume)| ClientFrame::Hello { id, token, resume }),
        (
            opt_id(),
            text(),
            option::of(since()),
            option::of(any::<bool>())
        )
            .prop_map(|(id, room, since, presence)| ClientFrame::Join {
                id,
                room,
                since,
                presence
            }),
        (opt_id(), text()).prop_map(|(id, room)| ClientFrame::Leave { id, room }),
        (
            opt_id(),
            text(),
            data(),
            option::of("[A-Za-z0-9_.:-]{1,64}")
        )
            .prop_map(|(id, room, data, key)| ClientFrame::Publish {
                id,
                room,
                data,
                key,
            }),
        (opt_id(), target(), data()).prop_map(|(id, to, data)| ClientFrame::Send { id, to, data }),
        (opt_id(), text()).prop_map(|(id, room)| ClientFrame::Presence { id, room }),
        opt_id().prop_map(|id| ClientFrame::Ping { id }),
        (opt_id(), text(), data()).prop_map(|(id, method, data)| ClientFrame::Rpc {
            id,
            method,
            data
        }),
        (opt_id(), text()).prop_map(|(id, token)| ClientFrame::Refresh { id, token }),
    ]
}

/// Every variant of [`ServerFrame`], with equal weight.
fn server_frame() -> impl Strategy<Value = ServerFrame> {
    prop_oneof![
        (
            opt_id(),
            text(),
            text(),
            text(),
            text(),
            any::<u64>(),
            any::<bool>(),
            vec(room_status(), 0..4),
            option::of(any::<u64>()),
        )
            .prop_map(
                |(
                    id,
                    session,
                    resume_token,
                    user,
                    node,
                    ping_interval_ms,
                    resumed,
                    rooms,
                    token_expires_at,
                )| {
                    ServerFrame::Welcome {
                        id,
                        session,
                        resume_token,
                        user,
                        node,
                        ping_interval_ms,
                        resumed,
                        rooms,
                        token_expires_at,
                    }
                }
            ),
        (
            opt_id(),
            text(),
            any::<u64>(),
            text(),
            option::of(any::<bool>())
        )
            .prop_map(|(id, room, offset, epoch, recovered)| ServerFrame::Joined {
                id,
                room,
                offset,
                epoch,
                recovered
            }),
        (opt_id(), text(), option::of(text())).prop_map(|(id, room, reason)| ServerFrame::Left {
            id,
            room,
            reason
        }),
        (text(), any::<u64>(), text(), data(), option::of(member())).prop_map(
            |(room, offset, epoch, data, from)| ServerFrame::Message {
                room,
                offset,
                epoch,
                data,
                from
            }
        ),
        (data(), option::of(member())).prop_map(|(data, from)| ServerFrame::Direct { data, from }),
        (text(), member()).prop_map(|(room, member)| ServerFrame::PresenceJoin { room, member }),
        (text(), member()).prop_map(|(room, member)| ServerFrame::PresenceLeave { room, member }),
        (opt_id(), text(), vec(member(), 0..4))
            .prop_map(|(id, room, members)| { ServerFrame::Presence { id, room, members } }),
        (any::<u64>(), option::of(any::<u64>()), any::<bool>()).prop_map(
            |(id, offset, duplicate)| ServerFrame::Ack {
                id,
                offset,
                duplicate
            }
        ),
        opt_id().prop_map(|id| ServerFrame::Pong { id }),
        (
            opt_id(),
            prop::sample::select(ErrorCode::ALL.to_vec()),
            text()
        )
            .prop_map(|(id, code, message)| ServerFrame::Error { id, code, message }),
        (
            prop::sample::select(vec![ReconnectReason::Shutdown, ReconnectReason::Rebalance]),
            any::<u64>()
        )
            .prop_map(|(reason, after_ms)| ServerFrame::Reconnect { reason, after_ms }),
        (opt_id(), data()).prop_map(|(id, data)| ServerFrame::RpcResult { id, data }),
        (opt_id(), any::<u64>())
            .prop_map(|(id, expires_at)| ServerFrame::Refreshed { id, expires_at }),
    ]
}

// ---------------------------------------------------------------------------
// Checks.
// ---------------------------------------------------------------------------

/// `decode(encode(frame)) == frame`, and encoding the decoded frame again
/// gives the same bytes.
fn same_codec<T>(codec: Codec, frame: &T) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let bytes = codec.encode(frame).map_err(TestCaseError::fail)?;
    let back: T = codec
        .decode(&bytes)
        .map_err(|e| TestCaseError::fail(format!("{codec:?} decode: {e} (id {:?})", e.id)))?;
    prop_assert_eq!(&back, frame, "{:?}", codec);
    let again = codec.encode(&back).map_err(TestCaseError::fail)?;
    prop_assert_eq!(again, bytes, "{:?} re-encoding differs", codec);
    Ok(())
}

/// Encoded in `first`, decoded, re-encoded in `second`, decoded: the original.
fn across<T>(first: Codec, second: Codec, frame: &T) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let bytes = first.encode(frame).map_err(TestCaseError::fail)?;
    let middle: T = first
        .decode(&bytes)
        .map_err(|e| TestCaseError::fail(format!("{first:?} decode: {e}")))?;
    let bytes = second.encode(&middle).map_err(TestCaseError::fail)?;
    let back: T = second
        .decode(&bytes)
        .map_err(|e| TestCaseError::fail(format!("{second:?} decode: {e}")))?;
    prop_assert_eq!(&back, frame, "{:?} then {:?}", first, second);
    Ok(())
}

/// The `type` field as it is on the wire, read back with a plain decoder.
fn wire_type(codec: Codec, bytes: &[u8]) -> String {
    let value: Value = match codec {
        Codec::Json => serde_json::from_slice(bytes).expect("valid JSON"),
        Codec::MsgPack => rmp_serde::from_slice(bytes).expect("valid MessagePack"),
    };
    value["type"]
        .as_str()
        .expect("a frame is a map with a `type` string")
        .to_owned()
}

proptest! {
    #[test]
    fn client_frames_roundtrip_in_json(frame in client_frame()) {
        same_codec(Codec::Json, &frame)?;
    }

    #[test]
    fn client_frames_roundtrip_in_msgpack(frame in client_frame()) {
        same_codec(Codec::MsgPack, &frame)?;
    }

    #[test]
    fn server_frames_roundtrip_in_json(frame in server_frame()) {
        same_codec(Codec::Json, &frame)?;
    }

    #[test]
    fn server_frames_roundtrip_in_msgpack(frame in server_frame()) {
        same_codec(Codec::MsgPack, &frame)?;
    }

    #[test]
    fn client_frames_survive_json_then_msgpack_and_back(frame in client_frame()) {
        across(Codec::Json, Codec::MsgPack, &frame)?;
        across(Codec::MsgPack, Codec::Json, &frame)?;
    }

    #[test]
    fn server_frames_survive_json_then_msgpack_and_back(frame in server_frame()) {
        across(Codec::Json, Codec::MsgPack, &frame)?;
        across(Codec::MsgPack, Codec::Json, &frame)?;
    }

    #[test]
    fn room_data_survives_json_then_msgpack(data in data()) {
        // The relay case of PROTOCOL.md on its own, with bigger data than
        // inside a frame: a JSON `publish` fanned out as MessagePack `message`s.
        let publish = ClientFrame::Publish { id: Some(1), room: "r".into(), data, key: None };
        across(Codec::Json, Codec::MsgPack, &publish)?;
    }

    /// Pins the `float_roundtrip` feature: without it this fails in seconds.
    #[test]
    fn any_finite_float_survives_json(
        f in any::<f64>().prop_filter("finite", |f| f.is_finite())
    ) {
        let direct = ServerFrame::Direct { data: Value::from(f), from: None };
        same_codec(Codec::Json, &direct)?;
        across(Codec::MsgPack, Codec::Json, &direct)?;
    }
}

#[test]
fn every_protocol_frame_type_is_generated_with_its_wire_name() {
    let mut runner = TestRunner::deterministic();
    let clients = client_frame();
    let servers = server_frame();
    let mut seen_client = [false; CLIENT_TYPES.len()];
    let mut seen_server = [false; SERVER_TYPES.len()];
    for _ in 0..1_000 {
        let frame = clients.new_tree(&mut runner).unwrap().current();
        let index = client_index(&frame);
        assert_eq!(frame.kind(), CLIENT_TYPES[index]);
        for codec in Codec::ALL {
            let bytes = codec.encode(&frame).unwrap();
            assert_eq!(wire_type(codec, &bytes), CLIENT_TYPES[index], "{codec:?}");
        }
        seen_client[index] = true;

        let frame = servers.new_tree(&mut runner).unwrap().current();
        let index = server_index(&frame);
        assert_eq!(frame.kind(), SERVER_TYPES[index]);
        for codec in Codec::ALL {
            let bytes = codec.encode(&frame).unwrap();
            assert_eq!(wire_type(codec, &bytes), SERVER_TYPES[index], "{codec:?}");
        }
        seen_server[index] = true;
    }
    let missing: Vec<_> = CLIENT_TYPES
        .iter()
        .zip(seen_client)
        .chain(SERVER_TYPES.iter().zip(seen_server))
        .filter(|(_, seen)| !seen)
        .map(|(name, _)| *name)
        .collect();
    assert!(missing.is_empty(), "never generated: {missing:?}");
}

/// `data` nested `depth` containers deep (alternating arrays and objects).
fn nested(depth: usize) -> Value {
    (0..depth).fold(Value::from(1), |inner, level| {
        if level % 2 == 0 {
            Value::Array(vec![inner])
        } else {
            Value::Object([("k".to_owned(), inner)].into_iter().collect())
        }
    })
}

#[test]
fn both_codecs_draw_the_depth_limit_at_the_same_place() {
    // The frame map is one level, so `data` may add MAX_DEPTH - 1 more.
    let deepest = ClientFrame::Publish {
        id: Some(9),
        room: "r".into(),
        data: nested(MAX_DEPTH - 1),
        key: None,
    };
    let too_deep = ClientFrame::Publish {
        id: Some(9),
        room: "r".into(),
        data: nested(MAX_DEPTH),
        key: None,
    };
    for codec in Codec::ALL {
        let bytes = codec.encode(&deepest).unwrap();
        assert_eq!(
            codec.decode::<ClientFrame>(&bytes).unwrap(),
            deepest,
            "{codec:?}"
        );
        let bytes = codec.encode(&too_deep).unwrap();
        assert!(codec.decode::<ClientFrame>(&bytes).is_err(), "{codec:?}");
    }
    // What a JSON client may publish, a MessagePack client can receive.
    for (first, second) in [(Codec::Json, Codec::MsgPack), (Codec::MsgPack, Codec::Json)] {
        across(first, second, &deepest).unwrap();
    }
}

#[test]
fn null_info_reads_as_absent() {
    // `Member::info` is optional and skipped when `None`; an explicit null is
    // the same as no `info` on the wire, in both codecs.
    let frame = ServerFrame::PresenceJoin {
        room: "r".into(),
        member: Member {
            user: "u".into(),
            session: "s".into(),
            info: Some(Value::Null),
        },
    };
    for codec in Codec::ALL {
        let bytes = codec.encode(&frame).unwrap();
        let ServerFrame::PresenceJoin { member, .. } = codec.decode(&bytes).unwrap() else {
            panic!("{codec:?}: not a presence_join");
        };
        assert_eq!(member.info, None, "{codec:?}");
    }
}

//! Writes the seed corpora: every frame type, valid, in each codec.
//!
//! `cargo run --manifest-path fuzz/Cargo.toml --example write_seeds` (from the
//! repository root) rewrites `fuzz/corpus/frame_decode_{json,msgpack}/seed-*`;
//! the files are checked in, so this is only needed when frames change.

use std::path::Path;

use roomcast_protocol::codec::MAX_DEPTH;
use roomcast_protocol::{
    ClientFrame, Codec, ErrorCode, Member, ReconnectReason, Resume, ResumeRoom, RoomStatus,
    ServerFrame, Since, Target,
};
use serde::Serialize;
use serde_json::json;

fn main() {
    let data = json!({
        "text": "héllo 👋 \"quoted\" \\ \u{0}",
        "n": [0, -1, 18446744073709551615u64, -9223372036854775808i64, 2.5, -1e-7],
        "ok": true,
        "none": null,
        "nested": {"a": [[{}], []]},
    });
    let member = Member {
        user: "alice".into(),
        session: "s-1".into(),
        info: Some(json!({"name": "Alice"})),
    };
    let clients = [
        ClientFrame::Hello {
            id: Some(1),
            token: Some("eyJhbGciOiJIUzI1NiJ9.e30.sig".into()),
            resume: Some(Resume {
                session: "s-1".into(),
                token: "rt".into(),
                rooms: vec![ResumeRoom {
                    room: "lobby".into(),
                    offset: 41,
                    epoch: "e1".into(),
                    presence: Some(true),
                }],
            }),
        },
        ClientFrame::Join {
            id: Some(2),
            room: "lobby".into(),
            since: Some(Since {
                offset: 40,
                epoch: "e1".into(),
            }),
            presence: Some(true),
        },
        ClientFrame::Leave {
            id: None,
            room: "lobby".into(),
        },
        ClientFrame::Publish {
            id: Some(3),
            room: "lobby".into(),
            data: data.clone(),
        },
        ClientFrame::Send {
            id: Some(4),
            to: Target::user("bob"),
            data: json!("hi"),
        },
        ClientFrame::Presence {
            id: Some(5),
            room: "lobby".into(),
        },
        ClientFrame::Ping { id: None },
    ];
    // At the depth limit: the frame map plus MAX_DEPTH - 1 nested containers,
    // so mutations land on both sides of the boundary, where the two codecs
    // once disagreed (docs/fuzzing.md).
    let deepest = ClientFrame::Publish {
        id: Some(8),
        room: "deep".into(),
        data: (1..MAX_DEPTH).fold(json!(1), |inner, level| {
            if level % 2 == 0 {
                json!({ "k": inner })
            } else {
                json!([inner])
            }
        }),
    };
    let servers = [
        ServerFrame::Welcome {
            id: Some(1),
            session: "s-1".into(),
            resume_token: "rt".into(),
            user: "alice".into(),
            node: "n1".into(),
            ping_interval_ms: 25_000,
            resumed: true,
            rooms: vec![RoomStatus {
                room: "lobby".into(),
                offset: 42,
                epoch: "e1".into(),
                recovered: true,
            }],
        },
        ServerFrame::Joined {
            id: Some(2),
            room: "lobby".into(),
            offset: 42,
            epoch: "e1".into(),
            recovered: Some(false),
        },
        ServerFrame::Left {
            id: None,
            room: "lobby".into(),
        },
        ServerFrame::Message {
            room: "lobby".into(),
            offset: 43,
            epoch: "e1".into(),
            data,
            from: Some(member.clone()),
        },
        ServerFrame::Direct {
            data: json!([1, "two", 3.0]),
            from: None,
        },
        ServerFrame::PresenceJoin {
            room: "lobby".into(),
            member: member.clone(),
        },
        ServerFrame::PresenceLeave {
            room: "lobby".into(),
            member: member.clone(),
        },
        ServerFrame::Presence {
            id: Some(5),
            room: "lobby".into(),
            members: vec![member],
        },
        ServerFrame::Ack {
            id: 3,
            offset: Some(43),
        },
        ServerFrame::Pong { id: Some(6) },
        ServerFrame::error(Some(7), ErrorCode::NotJoined, "join the room first"),
        ServerFrame::Reconnect {
            reason: ReconnectReason::Rebalance,
            after_ms: 500,
        },
    ];

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (codec, target) in [
        (Codec::Json, "frame_decode_json"),
        (Codec::MsgPack, "frame_decode_msgpack"),
    ] {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).expect("create corpus dir");
        for frame in &clients {
            write(&dir, codec, "client", frame.kind(), frame);
        }
        write(&dir, codec, "client", "publish-deepest", &deepest);
        for frame in &servers {
            write(&dir, codec, "server", frame.kind(), frame);
        }
    }
}

fn write<T: Serialize>(dir: &Path, codec: Codec, side: &str, kind: &str, frame: &T) {
    let bytes = codec.encode(frame).expect("encode seed");
    let path = dir.join(format!("seed-{side}-{kind}"));
    std::fs::write(&path, &bytes).expect("write seed");
}

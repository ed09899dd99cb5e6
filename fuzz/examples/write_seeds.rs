//! Writes the seed corpora: every frame type, valid, in each codec; an
//! envelope of every kind; valid and invalid JWTs.
//!
//! `cargo run --manifest-path fuzz/Cargo.toml --example write_seeds` (from the
//! repository root) rewrites `fuzz/corpus/<target>/seed-*` of the four
//! targets; the files are checked in, so this is only needed when frames,
//! envelopes or the jwt_claims input format change.

use std::path::Path;

use roomcast_fuzz::jwt::{self, Input, Mode};
use roomcast_protocol::codec::MAX_DEPTH;
use roomcast_protocol::envelope::{Envelope, Kind};
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
            key: None,
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
        ClientFrame::Rpc {
            id: Some(8),
            method: "orders.list".into(),
            data: data.clone(),
        },
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
        ServerFrame::RpcResult {
            id: Some(8),
            data: json!({"orders": [1, 2, 3]}),
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

    envelopes(&root.join("envelope_decode"));
    tokens(&root.join("jwt_claims"));
}

fn write<T: Serialize>(dir: &Path, codec: Codec, side: &str, kind: &str, frame: &T) {
    let bytes = codec.encode(frame).expect("encode seed");
    let path = dir.join(format!("seed-{side}-{kind}"));
    std::fs::write(&path, &bytes).expect("write seed");
}

/// One envelope of every kind, as nodes make them, with the head patched
/// as the publish script does; one before patching (short epoch); and the
/// most deeply nested `data` the decoder accepts.
fn envelopes(dir: &Path) {
    std::fs::create_dir_all(dir).expect("create corpus dir");
    let alice = Member {
        user: "alice".into(),
        session: "s-1".into(),
        info: Some(json!({"name": "Alice", "tags": ["a", 1, 2.5, null]})),
    };
    let bob = Member {
        user: "bob".into(),
        session: "s-2".into(),
        info: None,
    };
    let mut message = Envelope::new(Kind::Message, "chat:lobby", "node-a", 1_700_000_000_000_000);
    message.offset = 42;
    message.epoch = "0123456789abcdef".into();
    message.data = Some(json!({"text": "héllo 👋", "n": [0, -1, 18446744073709551615u64, -1e-7]}));
    message.from = Some(alice.clone());
    message.trace = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());

    let mut unpatched = message.clone();
    unpatched.offset = 0;
    unpatched.epoch = String::new();
    unpatched.trace = None;
    unpatched.data = Some(json!(null));

    let mut join = Envelope::new(Kind::PresenceJoin, "chat:lobby", "node-b", 1);
    join.member = Some(alice.clone());
    let mut leave = Envelope::new(Kind::PresenceLeave, "chat:lobby", "node-b", 2);
    leave.member = Some(bob.clone());

    let mut direct = Envelope::new(Kind::Direct, "", "node-a", 3);
    direct.target = Some(Target::user("bob"));
    direct.data = Some(json!("hi"));
    direct.from = Some(alice);

    let mut disconnect = Envelope::new(Kind::Disconnect, "", "node-c", 4);
    disconnect.target = Some(Target {
        user: Some("bob".into()),
        session: Some("s-2".into()),
    });

    for (name, env) in [
        ("message", &message),
        ("message-unpatched", &unpatched),
        ("presence_join", &join),
        ("presence_leave", &leave),
        ("direct", &direct),
        ("disconnect", &disconnect),
    ] {
        let bytes = env.encode().expect("encode seed envelope");
        std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("write seed");
    }

    // The deepest data the decoder takes: mutations land on both sides of
    // its depth limit.
    let mut deepest = None;
    let mut data = json!(1);
    for level in 1.. {
        data = if level % 2 == 0 {
            json!({ "k": data })
        } else {
            json!([data])
        };
        let mut env = message.clone();
        env.data = Some(data.clone());
        let bytes = env.encode().expect("encode deep envelope");
        if Envelope::decode(&bytes).is_err() {
            break;
        }
        deepest = Some(bytes);
    }
    let deepest = deepest.expect("some depth decodes");
    std::fs::write(dir.join("seed-message-deepest"), deepest).expect("write seed");
}

/// Valid and invalid tokens, each in a few of the `jwt_claims` input modes
/// (see `roomcast_fuzz::jwt`), with room names to match the claims against.
fn tokens(dir: &Path) {
    std::fs::create_dir_all(dir).expect("create corpus dir");
    let hs256 = json!({"alg": "HS256", "typ": "JWT"}).to_string();
    let far = 4_102_444_800u64; // 2100-01-01
    let valid = json!({
        "sub": "alice",
        "exp": far,
        "rooms": ["chat:*", "game:?", "dm:alice:*", "*b*c*"],
        "publish": ["news:*"],
        "info": {"name": "Alice"},
    })
    .to_string();
    let rooms: &[&[u8]] = &[
        b"chat:lobby",
        b"game:1",
        b"game:12",
        b"news:today",
        b"dm:alice:bob",
        b"abc",
        b"bad room",
        b"",
        "caf\u{e9}".as_bytes(),
    ];
    let cases: Vec<(&str, String, String)> = vec![
        ("valid", hs256.clone(), valid.clone()),
        (
            "minimal",
            hs256.clone(),
            json!({"sub": "u", "exp": far}).to_string(),
        ),
        (
            "alg-none",
            json!({"alg": "none", "typ": "JWT"}).to_string(),
            valid.clone(),
        ),
        (
            "alg-rs256",
            json!({"alg": "RS256", "typ": "JWT"}).to_string(),
            valid.clone(),
        ),
        (
            "alg-hs512",
            json!({"alg": "HS512"}).to_string(),
            valid.clone(),
        ),
        (
            "expired",
            hs256.clone(),
            json!({"sub": "alice", "exp": 1_000_000_000u64, "rooms": ["*"]}).to_string(),
        ),
        (
            "no-sub",
            hs256.clone(),
            json!({"exp": far, "rooms": ["*"]}).to_string(),
        ),
        (
            "empty-sub",
            hs256.clone(),
            json!({"sub": "", "exp": far}).to_string(),
        ),
        (
            "no-exp",
            hs256.clone(),
            json!({"sub": "alice", "rooms": ["*"]}).to_string(),
        ),
        (
            "nbf-future",
            hs256.clone(),
            json!({"sub": "alice", "exp": far, "nbf": far - 1}).to_string(),
        ),
        (
            "nbf-past",
            hs256.clone(),
            json!({"sub": "alice", "exp": far, "nbf": 1_000_000_000u64, "iat": 1_000_000_000u64})
                .to_string(),
        ),
        (
            "aud",
            hs256.clone(),
            json!({"sub": "alice", "exp": far, "aud": "roomcast"}).to_string(),
        ),
        (
            "rooms-not-strings",
            hs256.clone(),
            json!({"sub": "alice", "exp": far, "rooms": [1, null], "publish": "x"}).to_string(),
        ),
    ];
    for (name, header, payload) in &cases {
        let signing_input = format!(
            "{}.{}",
            jwt::b64(header.as_bytes()),
            jwt::b64(payload.as_bytes())
        );
        let signed = format!(
            "{signing_input}.{}",
            jwt::sign(jwt::SECRET.as_bytes(), &signing_input)
        );
        let input = |mode, f0: &[u8], f1: &[u8], f2: &[u8]| {
            Input {
                mode,
                f0,
                f1,
                f2,
                rooms: rooms.to_vec(),
            }
            .to_bytes()
        };
        let seeds = [
            // The whole token, signed with the secret.
            ("token", input(Mode::Verbatim, signed.as_bytes(), b"", b"")),
            // Header and payload as JSON, signed by the harness.
            (
                "signed",
                input(Mode::Signed, header.as_bytes(), payload.as_bytes(), b""),
            ),
        ];
        for (how, bytes) in seeds {
            std::fs::write(dir.join(format!("seed-{how}-{name}")), bytes).expect("write seed");
        }
    }
    // Not signed with the secret.
    let signing_input = format!(
        "{}.{}",
        jwt::b64(hs256.as_bytes()),
        jwt::b64(valid.as_bytes())
    );
    let signature = jwt::sign(jwt::SECRET.as_bytes(), &signing_input);
    let mut other_bits = signature.clone().into_bytes();
    // The last character of a 32-byte signature carries 4 bits and 2 unused
    // ones: flip an unused bit, for a non-canonical encoding of the same MAC.
    let last = other_bits.pop().expect("signature");
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let index = alphabet.iter().position(|c| *c == last).expect("base64url");
    other_bits.push(alphabet[index ^ 1]);
    let unsigned: Vec<(&str, Vec<u8>)> = vec![
        (
            "alg-none-unsigned",
            format!(
                "{}.{}.",
                jwt::b64(br#"{"alg":"none","typ":"JWT"}"#),
                jwt::b64(valid.as_bytes())
            )
            .into_bytes(),
        ),
        (
            "wrong-signature",
            format!("{signing_input}.{}", "A".repeat(43)).into_bytes(),
        ),
        (
            "padded-signature",
            format!("{signing_input}.{signature}=").into_bytes(),
        ),
        (
            "non-canonical-signature",
            format!("{signing_input}.{}", String::from_utf8(other_bits).unwrap()).into_bytes(),
        ),
        (
            "four-parts",
            format!("{signing_input}.{signature}.x").into_bytes(),
        ),
        ("garbage", b"not.a.jwt".to_vec()),
        ("empty", Vec::new()),
    ];
    for (name, token) in &unsigned {
        let bytes = Input {
            mode: Mode::Verbatim,
            f0: token,
            f1: b"",
            f2: b"",
            rooms: rooms.to_vec(),
        }
        .to_bytes();
        std::fs::write(dir.join(format!("seed-token-{name}")), bytes).expect("write seed");
    }
    let wrong_key = Input {
        mode: Mode::OtherKey,
        f0: hs256.as_bytes(),
        f1: valid.as_bytes(),
        f2: b"not-the-secret",
        rooms: rooms.to_vec(),
    };
    std::fs::write(dir.join("seed-other-key"), wrong_key.to_bytes()).expect("write seed");
    let text_signature = Input {
        mode: Mode::Signature,
        f0: hs256.as_bytes(),
        f1: valid.as_bytes(),
        f2: signature.as_bytes(),
        rooms: rooms.to_vec(),
    };
    std::fs::write(dir.join("seed-signature-text"), text_signature.to_bytes()).expect("write seed");
}

//! Every client frame over real sockets against a real single node, in both
//! codecs: the documented reply, offsets strictly increasing, in order,
//! across codecs.

use roomcast_protocol::{ClientFrame, Codec, ErrorCode, ServerFrame, Target};
use roomcast_testkit::ws::{join, join_watching, publish, RawClient};
use roomcast_testkit::Gateway;
use serde_json::json;

fn session_of(welcome: &ServerFrame) -> (String, String) {
    match welcome {
        ServerFrame::Welcome { session, user, .. } => (session.clone(), user.clone()),
        other => panic!("not a welcome: {other:?}"),
    }
}

#[tokio::test]
async fn hello_is_answered_with_a_complete_welcome_in_both_codecs() {
    let gw = Gateway::start(&[("ROOMCAST_NODE__ID", "node-t1")]);
    for codec in Codec::ALL {
        let (_c, welcome) = RawClient::ready(&gw.ws_url(), codec).await;
        match welcome {
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
            } => {
                assert_eq!(id, Some(0));
                assert_eq!(token_expires_at, None, "anonymous: no token, no expiry");
                assert_eq!(session.len(), 32);
                assert!(!resume_token.is_empty());
                assert_eq!(user, format!("anon-{session}"));
                assert_eq!(node, "node-t1");
                assert_eq!(ping_interval_ms, 25_000);
                assert!(!resumed);
                assert!(rooms.is_empty());
            }
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn join_publish_ack_and_own_message_carry_the_same_offset() {
    let gw = Gateway::start(&[]);
    for codec in Codec::ALL {
        let room = format!("room-{codec:?}");
        let (mut c, _) = RawClient::ready(&gw.ws_url(), codec).await;
        let joined = c.request(join(1, &room)).await;
        let ServerFrame::Joined {
            offset: 0,
            recovered: None,
            ref epoch,
            ..
        } = joined
        else {
            panic!("{joined:?}")
        };
        let epoch = epoch.clone();
        c.send(&publish(2, &room, json!({"text": "hi"}))).await;
        let mut acked = None;
        let mut seen = None;
        while acked.is_none() || seen.is_none() {
            match c.recv().await {
                ServerFrame::Ack { id: 2, offset, .. } => acked = offset,
                ServerFrame::Message {
                    room: r,
                    offset,
                    epoch: e,
                    data,
                    from,
                } => {
                    assert_eq!(r, room);
                    assert_eq!(e, epoch);
                    assert_eq!(data, json!({"text": "hi"}));
                    assert!(from.is_some());
                    seen = Some(offset);
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(acked, Some(1));
        assert_eq!(seen, Some(1));
        let left = c
            .request(ClientFrame::Leave {
                id: Some(3),
                room: room.clone(),
            })
            .await;
        assert_eq!(
            left,
            ServerFrame::Left {
                id: Some(3),
                room: room.clone(),
                reason: None,
            }
        );
        let again = c.request(ClientFrame::Leave { id: Some(4), room }).await;
        assert!(
            matches!(
                again,
                ServerFrame::Error {
                    code: ErrorCode::NotJoined,
                    ..
                }
            ),
            "{again:?}"
        );
    }
}

#[tokio::test]
async fn offsets_increase_strictly_and_arrive_in_order_across_codecs() {
    let gw = Gateway::start(&[]);
    let (mut json_member, _) = RawClient::ready(&gw.ws_url(), Codec::Json).await;
    let (mut pack_member, _) = RawClient::ready(&gw.ws_url(), Codec::MsgPack).await;
    let (mut publisher, _) = RawClient::ready(&gw.ws_url(), Codec::MsgPack).await;
    for c in [&mut json_member, &mut pack_member, &mut publisher] {
        c.request(join(1, "order")).await;
    }
    const N: u64 = 150;
    for i in 0..N {
        publisher
            .send(&ClientFrame::Publish {
                id: None,
                room: "order".into(),
                data: json!({"i": i, "s": "é✓"}),
                key: None,
            })
            .await;
    }
    for member in [&mut json_member, &mut pack_member] {
        for expected in 1..=N {
            let (offset, data) = member
                .recv_until(|f| match f {
                    ServerFrame::Message { offset, data, .. } => Some((*offset, data.clone())),
                    _ => None,
                })
                .await;
            assert_eq!(offset, expected);
            assert_eq!(data, json!({"i": expected - 1, "s": "é✓"}));
        }
    }
}

#[tokio::test]
async fn send_reaches_a_user_and_a_session_as_direct() {
    let gw = Gateway::start(&[]);
    let (mut alice, _) = RawClient::ready(&gw.ws_url(), Codec::Json).await;
    let (mut bob, bob_welcome) = RawClient::ready(&gw.ws_url(), Codec::MsgPack).await;
    let (bob_session, bob_user) = session_of(&bob_welcome);
    let ack = alice
        .request(ClientFrame::Send {
            id: Some(1),
            to: Target::user(bob_user),
            data: json!("to user"),
        })
        .await;
    assert_eq!(
        ack,
        ServerFrame::Ack {
            id: 1,
            offset: None,
            duplicate: false
        }
    );
    let ack = alice
        .request(ClientFrame::Send {
            id: Some(2),
            to: Target::session(bob_session),
            data: json!("to session"),
        })
        .await;
    assert_eq!(
        ack,
        ServerFrame::Ack {
            id: 2,
            offset: None,
            duplicate: false
        }
    );
    for expected in ["to user", "to session"] {
        match bob.recv().await {
            ServerFrame::Direct { data, from } => {
                assert_eq!(data, json!(expected));
                assert!(from.unwrap().user.starts_with("anon-"));
            }
            other => panic!("{other:?}"),
        }
    }
    let bad = alice
        .request(ClientFrame::Send {
            id: Some(3),
            to: Target::default(),
            data: json!(1),
        })
        .await;
    assert!(
        matches!(
            bad,
            ServerFrame::Error {
                id: Some(3),
                code: ErrorCode::BadRequest,
                ..
            }
        ),
        "{bad:?}"
    );
}

#[tokio::test]
async fn presence_lists_members_and_watchers_see_joins_and_leaves() {
    let gw = Gateway::start(&[]);
    let (mut watcher, w) = RawClient::ready(&gw.ws_url(), Codec::Json).await;
    let (watcher_session, _) = session_of(&w);
    watcher.request(join_watching(1, "p")).await;
    let (mut other, o) = RawClient::ready(&gw.ws_url(), Codec::MsgPack).await;
    let (other_session, _) = session_of(&o);
    other.request(join(1, "p")).await;
    match watcher.recv().await {
        ServerFrame::PresenceJoin { room, member } => {
            assert_eq!(room, "p");
            assert_eq!(member.session, other_session);
        }
        f => panic!("{f:?}"),
    }
    let listed = other
        .request(ClientFrame::Presence {
            id: Some(2),
            room: "p".into(),
        })
        .await;
    let ServerFrame::Presence {
        id: Some(2),
        members,
        ..
    } = listed
    else {
        panic!("{listed:?}")
    };
    let mut sessions: Vec<_> = members.iter().map(|m| m.session.clone()).collect();
    sessions.sort();
    let mut expected = vec![watcher_session, other_session.clone()];
    expected.sort();
    assert_eq!(sessions, expected);
    other.abort();
    match watcher.recv().await {
        ServerFrame::PresenceLeave { member, .. } => assert_eq!(member.session, other_session),
        f => panic!("{f:?}"),
    }
}

#[tokio::test]
async fn ping_is_answered_with_pong_echoing_the_id() {
    let gw = Gateway::start(&[]);
    for codec in Codec::ALL {
        let (mut c, _) = RawClient::ready(&gw.ws_url(), codec).await;
        assert_eq!(
            c.request(ClientFrame::Ping { id: Some(42) }).await,
            ServerFrame::Pong { id: Some(42) }
        );
    }
}

#[tokio::test]
async fn bad_commands_get_error_frames_and_the_connection_stays_open() {
    let gw = Gateway::start(&[]);
    let (mut c, _) = RawClient::ready(&gw.ws_url(), Codec::Json).await;
    c.send_bytes(r#"{"type":"teleport","id":5}"#).await;
    let f = c.recv().await;
    assert!(
        matches!(
            f,
            ServerFrame::Error {
                id: Some(5),
                code: ErrorCode::BadRequest,
                ..
            }
        ),
        "{f:?}"
    );
    c.send_bytes("not json").await;
    assert!(matches!(
        c.recv().await,
        ServerFrame::Error {
            id: None,
            code: ErrorCode::BadRequest,
            ..
        }
    ));
    let f = c.request(publish(6, "nope", json!(1))).await;
    assert!(
        matches!(
            f,
            ServerFrame::Error {
                code: ErrorCode::NotJoined,
                ..
            }
        ),
        "{f:?}"
    );
    let f = c.request(join(7, "bad room!")).await;
    assert!(
        matches!(
            f,
            ServerFrame::Error {
                code: ErrorCode::BadRequest,
                ..
            }
        ),
        "{f:?}"
    );
    let f = c
        .request(ClientFrame::Hello {
            id: Some(8),
            token: None,
            resume: None,
        })
        .await;
    assert!(
        matches!(
            f,
            ServerFrame::Error {
                code: ErrorCode::BadRequest,
                ..
            }
        ),
        "{f:?}"
    );
    assert_eq!(
        c.request(ClientFrame::Ping { id: Some(9) }).await,
        ServerFrame::Pong { id: Some(9) }
    );
}

#[tokio::test]
async fn too_many_rooms_is_limit_exceeded() {
    let gw = Gateway::start(&[("ROOMCAST_LIMITS__MAX_ROOMS_PER_CONNECTION", "2")]);
    let (mut c, _) = RawClient::ready(&gw.ws_url(), Codec::Json).await;
    c.request(join(1, "a")).await;
    c.request(join(2, "b")).await;
    let f = c.request(join(3, "c")).await;
    assert!(
        matches!(
            f,
            ServerFrame::Error {
                id: Some(3),
                code: ErrorCode::LimitExceeded,
                ..
            }
        ),
        "{f:?}"
    );
    // Re-joining a room already joined is not a new room.
    assert!(matches!(
        c.request(join(4, "a")).await,
        ServerFrame::Joined { .. }
    ));
}

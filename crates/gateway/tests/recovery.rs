//! Recovery with `since` and session resume, over real sockets: every missed
//! message once, in order, then live ones; nothing replayed when the gap
//! cannot be filled.

use roomcast_protocol::{ClientFrame, Codec, Resume, RoomStatus, ServerFrame, Since};
use roomcast_testkit::ws::{
    close_and_resume_at_once, join, join_watching, publish, resume_hello,
    resume_over_a_lingering_connection, RawClient,
};
use roomcast_testkit::Gateway;
use serde_json::json;

async fn joined_epoch(c: &mut RawClient, id: u64, room: &str) -> (u64, String) {
    match c.request(join(id, room)).await {
        ServerFrame::Joined { offset, epoch, .. } => (offset, epoch),
        other => panic!("{other:?}"),
    }
}

async fn publish_n(c: &mut RawClient, room: &str, range: std::ops::RangeInclusive<u64>) {
    for i in range {
        c.request(publish(1000 + i, room, json!(i))).await;
    }
}

/// Reads `message` frames of `room` until `n` have arrived; returns offsets.
async fn offsets(c: &mut RawClient, room: &str, n: usize) -> Vec<u64> {
    let mut out = Vec::new();
    while out.len() < n {
        if let ServerFrame::Message {
            room: r, offset, ..
        } = c.recv().await
        {
            if r == room {
                out.push(offset);
            }
        }
    }
    out
}

#[tokio::test]
async fn a_join_with_since_gets_the_missed_messages_then_live_ones() {
    let gw = Gateway::start(&[]);
    let (mut publisher, _) = RawClient::ready(&gw.ws_url(), Codec::Json).await;
    let (_, epoch) = joined_epoch(&mut publisher, 1, "r").await;
    publish_n(&mut publisher, "r", 1..=8).await;

    let (mut late, _) = RawClient::ready(&gw.ws_url(), Codec::MsgPack).await;
    let joined = late
        .request(ClientFrame::Join {
            id: Some(1),
            room: "r".into(),
            since: Some(Since {
                offset: 5,
                epoch: epoch.clone(),
            }),
            presence: None,
        })
        .await;
    assert_eq!(
        joined,
        ServerFrame::Joined {
            id: Some(1),
            room: "r".into(),
            offset: 8,
            epoch,
            recovered: Some(true)
        }
    );
    assert_eq!(offsets(&mut late, "r", 3).await, [6, 7, 8]);
    publish_n(&mut publisher, "r", 9..=9).await;
    assert_eq!(offsets(&mut late, "r", 1).await, [9]);
}

#[tokio::test]
async fn a_gap_older_than_history_is_not_recovered_and_nothing_is_replayed() {
    let gw = Gateway::start(&[("ROOMCAST_HISTORY__SIZE", "3")]);
    let (mut publisher, _) = RawClient::ready(&gw.ws_url(), Codec::Json).await;
    let (_, epoch) = joined_epoch(&mut publisher, 1, "r").await;
    publish_n(&mut publisher, "r", 1..=10).await;
    let (mut late, _) = RawClient::ready(&gw.ws_url(), Codec::Json).await;
    let joined = late
        .request(ClientFrame::Join {
            id: Some(1),
            room: "r".into(),
            since: Some(Since {
                offset: 2,
                epoch: epoch.clone(),
            }),
            presence: None,
        })
        .await;
    assert!(
        matches!(
            joined,
            ServerFrame::Joined {
                offset: 10,
                recovered: Some(false),
                ..
            }
        ),
        "{joined:?}"
    );
    publish_n(&mut publisher, "r", 11..=11).await;
    // The first message after joined is the live one: no partial replay.
    assert_eq!(offsets(&mut late, "r", 1).await, [11]);
}

#[tokio::test]
async fn a_join_with_another_epoch_is_not_recovered() {
    let gw = Gateway::start(&[]);
    let (mut publisher, _) = RawClient::ready(&gw.ws_url(), Codec::Json).await;
    joined_epoch(&mut publisher, 1, "r").await;
    publish_n(&mut publisher, "r", 1..=3).await;
    let (mut late, _) = RawClient::ready(&gw.ws_url(), Codec::Json).await;
    let joined = late
        .request(ClientFrame::Join {
            id: Some(1),
            room: "r".into(),
            since: Some(Since {
                offset: 1,
                epoch: "not-this-epoch".into(),
            }),
            presence: None,
        })
        .await;
    assert!(
        matches!(
            joined,
            ServerFrame::Joined {
                recovered: Some(false),
                ..
            }
        ),
        "{joined:?}"
    );
    publish_n(&mut publisher, "r", 4..=4).await;
    assert_eq!(offsets(&mut late, "r", 1).await, [4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_with_since_during_continuous_publishing_have_no_gap_and_no_duplicate() {
    let gw = Gateway::start(&[
        ("ROOMCAST_LIMITS__MESSAGES_PER_SECOND", "100000"),
        ("ROOMCAST_LIMITS__MESSAGE_BURST", "100000"),
        ("ROOMCAST_HISTORY__SIZE", "1000"),
    ]);
    let url = gw.ws_url();
    let (mut publisher, _) = RawClient::ready(&url, Codec::Json).await;
    let (_, epoch) = joined_epoch(&mut publisher, 1, "busy").await;
    let pub_task = tokio::spawn(async move {
        for i in 1..=600u64 {
            publisher
                .send(&ClientFrame::Publish {
                    id: None,
                    room: "busy".into(),
                    data: json!(i),
                    key: None,
                })
                .await;
            if i % 50 == 0 {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
        publisher
    });
    // Joiners arrive while messages flow, each recovering from offset 0.
    let mut joiners = Vec::new();
    for k in 0..6 {
        tokio::time::sleep(std::time::Duration::from_millis(15 * k)).await;
        let (mut c, _) = RawClient::ready(&url, Codec::ALL[k as usize % 2]).await;
        c.send(&ClientFrame::Join {
            id: Some(1),
            room: "busy".into(),
            since: Some(Since {
                offset: 0,
                epoch: epoch.clone(),
            }),
            presence: None,
        })
        .await;
        joiners.push(c);
    }
    pub_task.await.unwrap();
    for mut c in joiners {
        let mut next = 1;
        while next <= 600 {
            match c.recv().await {
                ServerFrame::Message { offset, .. } => {
                    assert_eq!(offset, next, "gap or duplicate");
                    next += 1;
                }
                ServerFrame::Joined { recovered, .. } => assert_eq!(recovered, Some(true)),
                other => panic!("{other:?}"),
            }
        }
    }
}

#[tokio::test]
async fn a_resumed_client_gets_missed_messages_in_order_after_an_abrupt_disconnect() {
    let gw = Gateway::start(&[]);
    let (mut publisher, _) = RawClient::ready(&gw.ws_url(), Codec::Json).await;
    joined_epoch(&mut publisher, 1, "r").await;
    let (mut client, welcome) = RawClient::ready(&gw.ws_url(), Codec::MsgPack).await;
    let ServerFrame::Welcome {
        session,
        resume_token,
        user,
        ..
    } = welcome
    else {
        unreachable!()
    };
    let (_, epoch) = joined_epoch(&mut client, 1, "r").await;
    publish_n(&mut publisher, "r", 1..=2).await;
    assert_eq!(offsets(&mut client, "r", 2).await, [1, 2]);
    client.abort();
    // Published while the client is away.
    publish_n(&mut publisher, "r", 3..=5).await;

    let mut back = RawClient::connect(&gw.ws_url(), Codec::MsgPack).await;
    back.send(&resume_hello(&session, &resume_token, "r", 2, &epoch))
        .await;
    match back.recv().await {
        ServerFrame::Welcome {
            session: s,
            user: u,
            resumed,
            rooms,
            ..
        } => {
            assert_eq!(s, session);
            assert_eq!(u, user);
            assert!(resumed);
            assert_eq!(
                rooms,
                vec![RoomStatus {
                    room: "r".into(),
                    offset: 5,
                    epoch,
                    recovered: true
                }]
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(offsets(&mut back, "r", 3).await, [3, 4, 5]);
    publish_n(&mut publisher, "r", 6..=6).await;
    assert_eq!(offsets(&mut back, "r", 1).await, [6]);
}

/// A resume sent while the node is still closing a session disconnected
/// through the API (its client has not answered the close yet, so the old
/// connection is still listed) does not take the session over: it starts
/// a fresh one.
#[tokio::test]
async fn a_resume_racing_the_close_of_a_disconnected_session_starts_fresh() {
    let gw = Gateway::start(&[]);
    let (old, welcome) = RawClient::ready(&gw.ws_url(), Codec::Json).await;
    let ServerFrame::Welcome {
        session,
        resume_token,
        ..
    } = welcome
    else {
        unreachable!()
    };
    let body = format!(r#"{{"session":"{session}"}}"#);
    let key = ("Authorization", "Bearer test-key");
    let (status, answer) =
        roomcast_testkit::http_request(gw.addr, "POST", "/api/disconnect", &[key], &body).unwrap();
    assert_eq!((status, answer.as_str()), (200, r#"{"disconnected":1}"#));
    // `old` is not read, so the node waits for its answer to the close.
    let mut back = RawClient::connect(&gw.ws_url(), Codec::Json).await;
    back.send(&resume_hello(&session, &resume_token, "r", 0, "0"))
        .await;
    match back.recv().await {
        ServerFrame::Welcome {
            session: s,
            resumed,
            ..
        } => {
            assert!(!resumed, "resumed a session the API disconnected");
            assert_ne!(s, session);
        }
        other => panic!("{other:?}"),
    }
    drop(old);
}

#[tokio::test]
async fn a_forged_resume_token_starts_a_fresh_session() {
    let gw = Gateway::start(&[]);
    let (victim, welcome) = RawClient::ready(&gw.ws_url(), Codec::Json).await;
    let ServerFrame::Welcome { session, .. } = welcome else {
        unreachable!()
    };
    victim.abort();
    let mut attacker = RawClient::connect(&gw.ws_url(), Codec::Json).await;
    attacker
        .send(&ClientFrame::Hello {
            id: None,
            token: None,
            resume: Some(Resume {
                session: session.clone(),
                token: "AAAA".into(),
                rooms: vec![],
            }),
        })
        .await;
    match attacker.recv().await {
        ServerFrame::Welcome {
            session: s,
            resumed,
            ..
        } => {
            assert!(!resumed);
            assert_ne!(s, session);
        }
        other => panic!("{other:?}"),
    }
}

/// The old connection of a session still lingers when the session resumes
/// on a new one: the takeover closes the old one, and its teardown leaves
/// the room's watchers seeing the session in the room (no leave after the
/// resumed join) and the room's presence list keeping it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_resumed_over_its_lingering_connection_does_not_leave_its_room() {
    let gw = Gateway::start(&[]);
    let (mut watcher, _) = RawClient::ready(&gw.ws_url(), Codec::Json).await;
    watcher.request(join_watching(1, "linger")).await;
    let mut kept = Vec::new();
    let mut sessions = Vec::new();
    for _ in 0..5 {
        let (new, session) = resume_over_a_lingering_connection(&gw.ws_url(), "linger").await;
        sessions.push(session);
        kept.push(new);
    }
    // The last presence event of each session is a join.
    let mut last = std::collections::HashMap::new();
    while let Some(event) = watcher
        .next_event_within(std::time::Duration::from_millis(1000))
        .await
    {
        match event {
            roomcast_testkit::ws::Event::Frame(ServerFrame::PresenceJoin { member, .. }) => {
                last.insert(member.session, "join");
            }
            roomcast_testkit::ws::Event::Frame(ServerFrame::PresenceLeave { member, .. }) => {
                last.insert(member.session, "leave");
            }
            roomcast_testkit::ws::Event::Frame(_) => {}
            roomcast_testkit::ws::Event::Closed(code) => panic!("watcher closed: {code}"),
        }
    }
    for session in &sessions {
        assert_eq!(last.get(session), Some(&"join"), "session {session}");
    }
    let (status, body) = roomcast_testkit::http_request(
        gw.addr,
        "GET",
        "/api/presence/linger",
        &[("Authorization", "Bearer test-key")],
        "",
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    for session in &sessions {
        assert!(body.contains(session.as_str()), "{session} missing: {body}");
    }
    drop(kept);
}

/// Clients that close and at once resume, over and over, all resume: the
/// session is parked before the old connection leaves the hub, so a resume
/// racing the teardown always finds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_close_and_resume_at_once_always_resume() {
    let gw = Gateway::start(&[]);
    let url = gw.ws_url();
    // Keeps the room's history while the others come and go.
    let (mut keeper, _) = RawClient::ready(&url, Codec::Json).await;
    joined_epoch(&mut keeper, 1, "storm").await;
    let tasks: Vec<_> = (0..40)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { close_and_resume_at_once(&url, "storm", 25).await.fresh })
        })
        .collect();
    let mut fresh = 0;
    for t in tasks {
        fresh += t.await.unwrap();
    }
    assert_eq!(fresh, 0, "resumes that started a fresh session");
}

//! The client against a real gateway while the connection stays up: commands
//! and their replies, room messages, direct messages, presence, errors.

mod common;

use std::time::Duration;

use common::{http_publish, messages, next_event, quick_client, start_gateway};
use roomcast_client::{Codec, ConnectionState, Error, ErrorCode, Event, JoinOptions, Since};
use serde_json::json;

#[tokio::test]
async fn a_client_joins_publishes_and_receives_its_own_message_with_the_acked_offset() {
    let gw = start_gateway(&[]).await;
    let (client, mut events) = quick_client(&[gw.ws_url()]).connect().await.unwrap();

    let joined = client.join("lobby").await.unwrap();
    assert_eq!(joined.room, "lobby");
    assert_eq!(joined.recovered, None, "no `since`, no `recovered`");

    let offset = client
        .publish("lobby", json!({"text": "hi"}))
        .await
        .unwrap();
    assert_eq!(offset, joined.offset + 1);

    let got = messages(&mut events, "lobby", 1).await;
    assert_eq!(got[0].offset, offset);
    assert_eq!(got[0].epoch, joined.epoch);
    assert_eq!(got[0].data, json!({"text": "hi"}));
    let session = client.session().unwrap();
    let from = got[0]
        .from
        .clone()
        .expect("a client's message names its sender");
    assert_eq!(from.session, session.session);
    assert_eq!(from.user, session.user);

    assert!(client.ping().await.unwrap() < Duration::from_secs(5));
}

#[tokio::test]
async fn clients_of_both_codecs_exchange_room_messages_and_direct_messages() {
    let gw = start_gateway(&[]).await;
    let (json_client, mut json_events) = quick_client(&[gw.ws_url()])
        .codec(Codec::Json)
        .connect()
        .await
        .unwrap();
    let (pack_client, mut pack_events) = quick_client(&[gw.ws_url()])
        .codec(Codec::MsgPack)
        .connect()
        .await
        .unwrap();
    json_client.join("chat").await.unwrap();
    pack_client.join("chat").await.unwrap();

    let from_json =
        json!({"text": "from json", "n": [1, -2, 3.5, null, true], "nested": {"k": "v"}});
    let from_pack = json!({"text": "from msgpack", "big": 1u64 << 40, "neg": -7});
    let first = json_client
        .publish("chat", from_json.clone())
        .await
        .unwrap();
    let second = pack_client
        .publish("chat", from_pack.clone())
        .await
        .unwrap();
    assert_eq!(second, first + 1);

    for events in [&mut json_events, &mut pack_events] {
        let got = messages(events, "chat", 2).await;
        assert_eq!(
            got.iter().map(|m| m.offset).collect::<Vec<_>>(),
            [first, second]
        );
        assert_eq!(got[0].data, from_json);
        assert_eq!(got[1].data, from_pack);
    }

    // A large message goes through permessage-deflate both ways (the client
    // and the node compress what is over their thresholds).
    let blob = json!({"blob": "roomcast ".repeat(4000)});
    let big = pack_client.publish("chat", blob.clone()).await.unwrap();
    for events in [&mut json_events, &mut pack_events] {
        let got = messages(events, "chat", 1).await;
        assert_eq!((got[0].offset, &got[0].data), (big, &blob));
    }

    // Direct messages, to a session and to a user, across codecs.
    let pack_session = pack_client.session().unwrap();
    json_client
        .send_to_session(&pack_session.session, json!("to your session"))
        .await
        .unwrap();
    json_client
        .send_to_user(&pack_session.user, json!({"to": "your user"}))
        .await
        .unwrap();
    let mut direct = Vec::new();
    while direct.len() < 2 {
        let d = next_event(&mut pack_events, "direct message", |e| match e {
            Event::Direct(d) => Some(d.clone()),
            _ => None,
        })
        .await;
        direct.push(d);
    }
    assert_eq!(direct[0].data, json!("to your session"));
    assert_eq!(direct[1].data, json!({"to": "your user"}));
    let sender = json_client.session().unwrap();
    assert_eq!(direct[0].from.as_ref().unwrap().session, sender.session);
}

#[tokio::test]
async fn presence_lists_members_and_announces_joins_and_leaves() {
    let gw = start_gateway(&[]).await;
    let (watcher, mut watcher_events) = quick_client(&[gw.ws_url()]).connect().await.unwrap();
    let (visitor, _visitor_events) = quick_client(&[gw.ws_url()])
        .codec(Codec::MsgPack)
        .connect()
        .await
        .unwrap();
    watcher
        .join_with(
            "hall",
            JoinOptions {
                presence: true,
                ..JoinOptions::default()
            },
        )
        .await
        .unwrap();
    visitor.join("hall").await.unwrap();
    let visitor_session = visitor.session().unwrap().session;

    let joined = next_event(&mut watcher_events, "presence_join", |e| match e {
        Event::PresenceJoin { room, member } if room == "hall" => Some(member.clone()),
        _ => None,
    })
    .await;
    assert_eq!(joined.session, visitor_session);

    let mut members: Vec<String> = watcher
        .presence("hall")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.session)
        .collect();
    members.sort();
    let mut expected = vec![watcher.session().unwrap().session, visitor_session.clone()];
    expected.sort();
    assert_eq!(members, expected);

    visitor.leave("hall").await.unwrap();
    let left = next_event(&mut watcher_events, "presence_leave", |e| match e {
        Event::PresenceLeave { room, member } if room == "hall" => Some(member.clone()),
        _ => None,
    })
    .await;
    assert_eq!(left.session, visitor_session);
}

#[tokio::test]
async fn server_errors_come_back_typed_and_the_connection_stays_usable() {
    let gw = start_gateway(&[]).await;
    let (client, _events) = quick_client(&[gw.ws_url()]).connect().await.unwrap();

    let err = client.publish("elsewhere", json!(1)).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotJoined), "{err}");
    let err = client.join("no spaces allowed").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::BadRequest), "{err}");
    let err = client.leave("never-joined").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotJoined), "{err}");

    client.join("fine").await.unwrap();
    client.publish("fine", json!("still works")).await.unwrap();
}

#[tokio::test]
async fn a_join_with_since_replays_the_messages_after_it_in_order() {
    let gw = start_gateway(&[]).await;
    let mut offsets = Vec::new();
    for n in 1..=5 {
        offsets.push(http_publish(gw.addr, "news", json!({"n": n})).await);
    }
    let (client, mut events) = quick_client(&[gw.ws_url()]).connect().await.unwrap();
    // Learn the epoch with a plain join, leave, then come back from offset 2.
    let first = client.join("news").await.unwrap();
    client.leave("news").await.unwrap();
    let joined = client
        .join_with(
            "news",
            JoinOptions {
                since: Some(Since {
                    offset: offsets[1],
                    epoch: first.epoch.clone(),
                }),
                presence: false,
            },
        )
        .await
        .unwrap();
    assert_eq!(joined.recovered, Some(true));
    assert_eq!(joined.offset, offsets[4]);
    let got = messages(&mut events, "news", 3).await;
    assert_eq!(
        got.iter().map(|m| m.offset).collect::<Vec<_>>(),
        &offsets[2..]
    );
    assert_eq!(got[0].data, json!({"n": 3}));
    assert!(
        got[0].from.is_none(),
        "HTTP-published messages have no sender"
    );
}

#[tokio::test]
async fn a_closed_client_refuses_commands() {
    let gw = start_gateway(&[]).await;
    let (client, mut events) = quick_client(&[gw.ws_url()]).connect().await.unwrap();
    let other_handle = client.clone();
    client.close().await;
    assert_eq!(
        other_handle.state(),
        ConnectionState::Disconnected { error: None }
    );
    assert_eq!(other_handle.join("x").await.unwrap_err(), Error::Closed);
    next_event(&mut events, "Disconnected", |e| match e {
        Event::State(ConnectionState::Disconnected { error: None }) => Some(()),
        _ => None,
    })
    .await;
    assert!(
        events.recv().await.is_none(),
        "the stream ends after the stop"
    );
}

#[tokio::test]
async fn rpc_returns_the_backends_data_or_its_error() {
    let backend = tokio::task::spawn_blocking(|| roomcast_testkit::HookBackend::start("x", 3.0))
        .await
        .unwrap();
    let url = backend.url("/rpc");
    let gw = tokio::task::spawn_blocking(move || {
        roomcast_testkit::Gateway::start(&[("ROOMCAST_PROXY__RPC__URL", url.as_str())])
    })
    .await
    .unwrap();
    let (client, _events) = quick_client(&[gw.ws_url()]).connect().await.unwrap();
    assert_eq!(
        client
            .rpc("math:add", json!({"a": 1, "b": 2}))
            .await
            .unwrap(),
        json!(3)
    );
    let err = client.rpc("fail", json!(null)).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::BadRequest), "{err}");
}

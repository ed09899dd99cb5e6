//! The client when connections fail: resume after a dropped socket, a killed
//! and restarted node, failover between URLs, a frozen node caught by the
//! heartbeat, a draining node's reconnect notice, a refused token, a publish
//! caught in flight (sent again with its key, stored once), and tokens that
//! expire (refreshed on the live connection, or 4401 without a provider).

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{
    buffered_messages, connected, freeze, hs256_jwt, hs256_token, http_get, http_publish, messages,
    metric, next_event, quick_client, start_gateway, start_gateway_on, unix_now,
};
use roomcast_client::{
    Client, ConnectionState, DisconnectCause, Error, Event, JoinOptions, PublishOptions,
    ReconnectReason,
};
use roomcast_testkit::redis::RedisServer;
use roomcast_testkit::{free_port, Gateway};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_client_gets_the_messages_published_while_it_was_away_exactly_once_in_order() {
    let gw = start_gateway(&[]).await;
    let (reader, mut reader_events) = quick_client(&[gw.ws_url()]).connect().await.unwrap();
    let (writer, _writer_events) = quick_client(&[gw.ws_url()]).connect().await.unwrap();
    reader.join("feed").await.unwrap();
    writer.join("feed").await.unwrap();
    let session_before = reader.session().unwrap().session;

    let mut published = Vec::new();
    for n in 0..3 {
        published.push(writer.publish("feed", json!(n)).await.unwrap());
    }
    let mut received = messages(&mut reader_events, "feed", 3).await;

    // Cut the reader's socket; it comes back after 800 ms. Meanwhile the
    // writer publishes five more.
    reader
        .drop_connection_for_test(Duration::from_millis(800))
        .await;
    let cause = next_event(&mut reader_events, "Reconnecting", |e| match e {
        Event::State(ConnectionState::Reconnecting { cause, .. }) => Some(cause.clone()),
        _ => None,
    })
    .await;
    assert_eq!(cause, DisconnectCause::DroppedForTest);
    for n in 3..8 {
        published.push(writer.publish("feed", json!(n)).await.unwrap());
    }
    assert!(
        reader
            .publish("feed", json!("while away"))
            .await
            .unwrap_err()
            == Error::Disconnected,
        "a command with no connection fails at once"
    );

    let (resumed, session) = connected(&mut reader_events).await;
    assert!(resumed, "the session should have been resumed");
    assert_eq!(session.session, session_before);

    received.extend(messages(&mut reader_events, "feed", 5).await);
    published.push(writer.publish("feed", json!(8)).await.unwrap());
    received.extend(messages(&mut reader_events, "feed", 1).await);

    let offsets: Vec<u64> = received.iter().map(|m| m.offset).collect();
    assert_eq!(offsets, published, "every message once, in order");
    let data: Vec<_> = received.iter().map(|m| m.data.clone()).collect();
    assert_eq!(data, (0..9).map(|n| json!(n)).collect::<Vec<_>>());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        buffered_messages(&mut reader_events, "feed").is_empty(),
        "no duplicates after the resume"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reconnects_by_itself_when_its_gateway_is_killed_and_restarted_on_the_same_port() {
    let gw = start_gateway(&[]).await;
    let addr = gw.addr;
    let (client, mut events) = quick_client(&[gw.ws_url()]).connect().await.unwrap();
    let before = client
        .join_with(
            "room",
            JoinOptions {
                presence: true,
                ..JoinOptions::default()
            },
        )
        .await
        .unwrap();
    client.publish("room", json!("before")).await.unwrap();
    messages(&mut events, "room", 1).await;

    gw.process.signal("KILL");
    next_event(&mut events, "Reconnecting after the kill", |e| match e {
        Event::State(ConnectionState::Reconnecting { .. }) => Some(()),
        _ => None,
    })
    .await;
    // Let a few attempts fail against the closed port before the restart.
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(gw);
    let _restarted = start_gateway_on(addr).await;

    let (resumed, _) = connected(&mut events).await;
    assert!(
        !resumed,
        "an in-memory node forgets its sessions when it dies"
    );
    let (room, epoch) = next_event(&mut events, "RecoveryFailed", |e| match e {
        Event::RecoveryFailed { room, epoch, .. } => Some((room.clone(), epoch.clone())),
        _ => None,
    })
    .await;
    assert_eq!(room, "room");
    assert_ne!(epoch, before.epoch, "the restarted node starts a new epoch");

    // The client re-joined by itself: it is a member again and receives.
    let offset = client.publish("room", json!("after")).await.unwrap();
    let got = messages(&mut events, "room", 1).await;
    assert_eq!((got[0].offset, &got[0].epoch), (offset, &epoch));
    assert_eq!(got[0].data, json!("after"));

    // It re-joined with presence on, as it had joined.
    let (newcomer, _newcomer_events) = quick_client(&[format!("ws://{addr}/ws")])
        .connect()
        .await
        .unwrap();
    newcomer.join("room").await.unwrap();
    let member = next_event(&mut events, "presence_join of the newcomer", |e| match e {
        Event::PresenceJoin { room, member } if room == "room" => Some(member.clone()),
        _ => None,
    })
    .await;
    assert_eq!(member.session, newcomer.session().unwrap().session);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_fails_over_to_the_next_url_when_the_first_is_down() {
    let gw = start_gateway(&[]).await;
    let dead = format!("ws://127.0.0.1:{}/ws", free_port());
    let (client, mut events) = quick_client(&[dead.clone(), gw.ws_url()])
        .connect()
        .await
        .unwrap();
    assert_eq!(client.session().unwrap().url, gw.ws_url());
    // `connect` returned after `welcome`, so the story so far is buffered.
    let mut story = Vec::new();
    while let Some(Event::State(state)) = events.try_recv() {
        story.push(state);
    }
    assert!(
        matches!(&story[0], ConnectionState::Connecting { url, attempt: 1 } if *url == dead),
        "{story:?}"
    );
    assert!(
        matches!(
            &story[1],
            ConnectionState::Reconnecting {
                cause: DisconnectCause::ConnectFailed(_),
                ..
            }
        ),
        "{story:?}"
    );
    assert!(
        matches!(&story[2], ConnectionState::Connecting { url, attempt: 2 } if *url == gw.ws_url()),
        "{story:?}"
    );
    client.join("up").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_gateway_is_caught_by_the_heartbeat_and_the_session_resumes_when_it_thaws() {
    let gw = start_gateway(&[("ROOMCAST_HEARTBEAT__PING_INTERVAL_MS", "300")]).await;
    let (client, mut events) = quick_client(&[gw.ws_url()])
        .heartbeat_slack(Duration::from_millis(200))
        .connect_timeout(Duration::from_millis(500))
        .connect()
        .await
        .unwrap();
    assert_eq!(
        client.session().unwrap().ping_interval,
        Duration::from_millis(300)
    );
    client.join("beat").await.unwrap();
    let session = client.session().unwrap().session;

    freeze(&gw.process).await;
    let frozen_at = Instant::now();
    let cause = next_event(&mut events, "Reconnecting after the freeze", |e| match e {
        Event::State(ConnectionState::Reconnecting { cause, .. }) => Some(cause.clone()),
        _ => None,
    })
    .await;
    assert_eq!(cause, DisconnectCause::HeartbeatTimeout);
    let noticed = frozen_at.elapsed();
    assert!(
        noticed >= Duration::from_millis(600) && noticed < Duration::from_secs(3),
        "dead after two intervals plus slack (800 ms), noticed after {noticed:?}"
    );

    tokio::time::sleep(Duration::from_millis(700)).await;
    gw.process.signal("CONT");
    let (resumed, info) = connected(&mut events).await;
    assert!(resumed, "the session outlives a short freeze");
    assert_eq!(info.session, session);
    client.publish("beat", json!("alive")).await.unwrap();
    messages(&mut events, "beat", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_gateway_sends_its_clients_to_the_next_node_after_the_announced_delay() {
    let draining = start_gateway(&[("ROOMCAST_DRAIN__WINDOW_MS", "100")]).await;
    let other = start_gateway(&[]).await;
    let (client, mut events) = quick_client(&[draining.ws_url(), other.ws_url()])
        .connect()
        .await
        .unwrap();
    assert_eq!(client.session().unwrap().url, draining.ws_url());
    client.join("moving").await.unwrap();

    draining.process.signal("TERM");
    let (reason, after) = next_event(&mut events, "the reconnect notice", |e| match e {
        Event::Reconnect { reason, after } => Some((*reason, *after)),
        _ => None,
    })
    .await;
    assert_eq!(reason, ReconnectReason::Shutdown);
    let (delay, cause) = next_event(&mut events, "Reconnecting", |e| match e {
        Event::State(ConnectionState::Reconnecting { delay, cause, .. }) => {
            Some((*delay, cause.clone()))
        }
        _ => None,
    })
    .await;
    assert_eq!(delay, after, "the server's after_ms replaces the backoff");
    assert!(
        matches!(cause, DisconnectCause::Closed { code: 1012, .. }),
        "{cause:?}"
    );
    let (_, session) = connected(&mut events).await;
    assert_eq!(session.url, other.ws_url());
    // Separate in-memory nodes share no history: the room comes back without
    // its missed messages, and the application hears about it.
    next_event(&mut events, "RecoveryFailed", |e| match e {
        Event::RecoveryFailed { room, .. } if room == "moving" => Some(()),
        _ => None,
    })
    .await;
    client.publish("moving", json!("here now")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_stops_the_client_instead_of_retrying_for_ever() {
    let gw = start_gateway(&[("ROOMCAST_AUTH__JWT_SECRET", "a-secret-for-tests")]).await;

    let err = quick_client(&[gw.ws_url()])
        .token("not-a-jwt")
        .connect()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unauthorized(_)), "{err:?}");

    let asked = Arc::new(AtomicU32::new(0));
    let counter = asked.clone();
    let err = quick_client(&[gw.ws_url()])
        .token_provider(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            async { Ok("still-not-a-jwt".to_string()) }
        })
        .connect()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unauthorized(_)), "{err:?}");
    assert_eq!(
        asked.load(Ordering::SeqCst),
        2,
        "a provider gets one more chance, not endless ones"
    );

    let err = quick_client(&[gw.ws_url()]).connect().await.unwrap_err();
    assert!(
        matches!(err, Error::Unauthorized(_)),
        "no token where one is required: {err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_provider_is_asked_again_for_every_connection() {
    const SECRET: &str = "a-secret-for-tests";
    let gw = start_gateway(&[("ROOMCAST_AUTH__JWT_SECRET", SECRET)]).await;
    let asked = Arc::new(AtomicU32::new(0));
    let counter = asked.clone();
    let (client, mut events) = quick_client(&[gw.ws_url()])
        .token_provider(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            async { Ok(hs256_token(SECRET, "alice")) }
        })
        .connect()
        .await
        .unwrap();
    assert_eq!(client.session().unwrap().user, "alice");
    client.join("secure").await.unwrap();
    assert_eq!(asked.load(Ordering::SeqCst), 1);

    client
        .drop_connection_for_test(Duration::from_millis(50))
        .await;
    next_event(&mut events, "Reconnecting", |e| match e {
        Event::State(ConnectionState::Reconnecting { .. }) => Some(()),
        _ => None,
    })
    .await;
    let (resumed, session) = connected(&mut events).await;
    assert!(resumed, "same user with a fresh token resumes");
    assert_eq!(session.user, "alice");
    assert_eq!(asked.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_in_flight_when_the_connection_drops_is_sent_again_with_its_key_and_stored_once()
{
    let gw = start_gateway(&[]).await;
    let (client, mut events) = quick_client(&[gw.ws_url()]).connect().await.unwrap();
    let (reader, mut reader_events) = quick_client(&[gw.ws_url()]).connect().await.unwrap();
    client.join("fragile").await.unwrap();
    reader.join("fragile").await.unwrap();
    let session = client.session().unwrap().session;

    // A stopped node takes the frame into its socket buffer but never
    // answers it; the client then loses the connection.
    freeze(&gw.process).await;
    let in_flight = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .publish_with(
                    "fragile",
                    json!("exactly once"),
                    PublishOptions {
                        key: Some("order-7".into()),
                    },
                )
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    client
        .drop_connection_for_test(Duration::from_millis(100))
        .await;
    next_event(&mut events, "Reconnecting", |e| match e {
        Event::State(ConnectionState::Reconnecting { .. }) => Some(()),
        _ => None,
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !in_flight.is_finished(),
        "the publish waits for the session"
    );
    // Thawed, the node reads the first copy from the old socket; the client,
    // back on a new connection, sends it again with the same key.
    gw.process.signal("CONT");

    let (resumed, info) = connected(&mut events).await;
    assert!(resumed);
    assert_eq!(info.session, session);
    let published = in_flight
        .await
        .unwrap()
        .expect("the publish succeeds after the reconnect");
    assert_eq!(published.offset, 1);
    assert_eq!(published.key, "order-7");

    let history = http_get(gw.addr, "/api/history/fragile").await;
    let stored: Vec<_> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["data"].clone())
        .collect();
    assert_eq!(stored, [json!("exactly once")], "stored once");
    assert_eq!(
        metric(gw.addr, "roomcast_publish_duplicates_total").await,
        1.0,
        "the node received both copies and stored one"
    );
    let next = client.publish("fragile", json!("next")).await.unwrap();
    assert_eq!(next, 2);
    let got = messages(&mut reader_events, "fragile", 2).await;
    let data: Vec<_> = got.iter().map(|m| m.data.clone()).collect();
    assert_eq!(
        data,
        [json!("exactly once"), json!("next")],
        "delivered once"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(buffered_messages(&mut reader_events, "fragile").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_answered_unavailable_is_retried_with_its_key_and_stored_once() {
    let redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let url = redis.url();
    let gw = tokio::task::spawn_blocking(move || {
        Gateway::start(&[
            ("ROOMCAST_REDIS__URL", &url),
            ("ROOMCAST_REDIS__COMMAND_TIMEOUT_MS", "300"),
            ("ROOMCAST_AUTH__RESUME_SECRET", "client-unavailable-test"),
        ])
    })
    .await
    .unwrap();
    let (client, _events) = quick_client(&[gw.ws_url()])
        .request_timeout(Duration::from_secs(10))
        .publish_attempts(20)
        .connect()
        .await
        .unwrap();
    let (reader, mut reader_events) = quick_client(&[gw.ws_url()]).connect().await.unwrap();
    client.join("flaky").await.unwrap();
    reader.join("flaky").await.unwrap();
    // The first publish loads the node's publish script into Redis.
    assert_eq!(client.publish("flaky", json!("warm-up")).await.unwrap(), 1);

    // A frozen Redis: the node's commands time out, the publish is
    // answered `unavailable`, and the client sends it again and again.
    redis.pause();
    let in_flight = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .publish_with("flaky", json!("once"), PublishOptions::default())
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(!in_flight.is_finished());
    redis.resume();
    let published = in_flight.await.unwrap().unwrap();
    assert_eq!(published.offset, 2);
    // Thawed, Redis ran the first copy's script: `unavailable` had not
    // meant "not stored", and the retry was answered as a duplicate.
    assert!(published.duplicate);
    assert!(metric(gw.addr, "roomcast_publish_duplicates_total").await >= 1.0);

    let history = http_get(gw.addr, "/api/history/flaky").await;
    let stored: Vec<_> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["data"].clone())
        .collect();
    assert_eq!(stored, [json!("warm-up"), json!("once")], "stored once");
    client.publish("flaky", json!("after")).await.unwrap();
    let got = messages(&mut reader_events, "flaky", 3).await;
    let data: Vec<_> = got.iter().map(|m| m.data.clone()).collect();
    assert_eq!(data, [json!("warm-up"), json!("once"), json!("after")]);
    drop(redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_publish_carries_a_key_and_a_repeated_key_is_acked_as_a_duplicate() {
    let gw = start_gateway(&[]).await;
    let (client, _events) = quick_client(&[gw.ws_url()]).connect().await.unwrap();
    client.join("keys").await.unwrap();
    let a = client
        .publish_with("keys", json!(1), PublishOptions::default())
        .await
        .unwrap();
    let b = client
        .publish_with("keys", json!(2), PublishOptions::default())
        .await
        .unwrap();
    assert_eq!((a.offset, a.duplicate, b.offset), (1, false, 2));
    assert_eq!(a.key.len(), 22);
    assert!(a
        .key
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
    assert_ne!(a.key, b.key);
    let again = client
        .publish_with(
            "keys",
            json!("other data"),
            PublishOptions {
                key: Some(a.key.clone()),
            },
        )
        .await
        .unwrap();
    assert_eq!((again.offset, again.duplicate), (1, true));
    let bad = client
        .publish_with(
            "keys",
            json!(3),
            PublishOptions {
                key: Some("no spaces".into()),
            },
        )
        .await;
    assert!(matches!(bad, Err(Error::InvalidKey(_))), "{bad:?}");
    let history = http_get(gw.addr, "/api/history/keys").await;
    assert_eq!(history["messages"].as_array().unwrap().len(), 2);
}

const SECRET: &str = "a-secret-for-tests";

/// A provider of tokens for `user` that expire `lifetime` seconds after
/// they are made, allowed the rooms in `rooms` (changeable by the test).
fn short_tokens(
    user: &'static str,
    lifetime: u64,
    rooms: Arc<Mutex<Vec<&'static str>>>,
) -> impl Fn() -> std::future::Ready<Result<String, String>> + Send + Sync + 'static {
    move || {
        let claims =
            json!({"sub": user, "exp": unix_now() + lifetime, "rooms": *rooms.lock().unwrap()});
        std::future::ready(Ok(hs256_jwt(SECRET, &claims)))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_provider_refreshes_a_4_second_token_and_the_connection_outlives_it() {
    let gw = start_gateway(&[("ROOMCAST_AUTH__JWT_SECRET", SECRET)]).await;
    let rooms = Arc::new(Mutex::new(vec!["*"]));
    let (client, mut events) = quick_client(&[gw.ws_url()])
        .token_provider(short_tokens("alice", 4, rooms))
        .connect()
        .await
        .unwrap();
    let first = client
        .token_expires_at()
        .expect("welcome has token_expires_at");
    assert!(first.abs_diff(unix_now() + 4) <= 1, "expires at {first}");
    client.join("r").await.unwrap();
    // The story of the first connection, buffered before `connect` returned.
    while events.try_recv().is_some() {}

    // Past the first token's expiry plus the node's leeway (at most 5 s).
    let until = UNIX_EPOCH + Duration::from_secs(first) + Duration::from_millis(6500);
    let mut refreshed = Vec::new();
    loop {
        let left = until
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        match tokio::time::timeout(left, events.recv()).await {
            Err(_) => break,
            Ok(None) => panic!("the client stopped"),
            Ok(Some(Event::TokenRefreshed { expires_at, server })) => {
                assert!(!server, "the client refreshed");
                refreshed.push(expires_at)
            }
            Ok(Some(Event::TokenRefreshFailed { error, .. })) => panic!("refresh failed: {error}"),
            Ok(Some(Event::State(state))) => panic!("the connection changed: {state:?}"),
            Ok(Some(_)) => {}
        }
    }
    assert!(refreshed.len() >= 2, "{} refreshes", refreshed.len());
    let last = client.token_expires_at().unwrap();
    assert!(last > first);
    assert_eq!(refreshed.last(), Some(&Some(last)));
    assert!(matches!(client.state(), ConnectionState::Connected { .. }));
    assert_eq!(client.publish("r", json!("still here")).await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_token_that_expires_ends_the_connection_with_4401() {
    let gw = start_gateway(&[("ROOMCAST_AUTH__JWT_SECRET", SECRET)]).await;
    let exp = unix_now() + 3;
    let token = hs256_jwt(SECRET, &json!({"sub": "bob", "exp": exp, "rooms": ["*"]}));
    let (client, mut events) = quick_client(&[gw.ws_url()])
        .token(token)
        .connect()
        .await
        .unwrap();
    assert_eq!(client.token_expires_at(), Some(exp));
    let error = next_event(&mut events, "Disconnected", |e| match e {
        Event::State(ConnectionState::Disconnected { error }) => Some(error.clone()),
        _ => None,
    })
    .await;
    assert!(unix_now() >= exp, "not before the token expired");
    match error {
        Some(Error::Unauthorized(why)) => assert!(
            why.contains("4401") && why.contains("token expired"),
            "{why}"
        ),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refreshed_token_that_allows_fewer_rooms_takes_the_client_out_of_them_for_good() {
    let gw = start_gateway(&[("ROOMCAST_AUTH__JWT_SECRET", SECRET)]).await;
    let rooms = Arc::new(Mutex::new(vec!["keep", "drop"]));
    let (client, mut events) = quick_client(&[gw.ws_url()])
        .token_provider(short_tokens("carol", 600, rooms.clone()))
        .connect()
        .await
        .unwrap();
    client.join("keep").await.unwrap();
    client.join("drop").await.unwrap();
    *rooms.lock().unwrap() = vec!["keep"];
    let expires_at = client.refresh_token().await.unwrap().unwrap();
    assert!(expires_at >= unix_now() + 590);
    let (room, reason) = next_event(&mut events, "Left", |e| match e {
        Event::Left { room, reason } => Some((room.clone(), reason.clone())),
        _ => None,
    })
    .await;
    assert_eq!(
        (room.as_str(), reason.as_deref()),
        ("drop", Some("forbidden"))
    );
    let err = client.publish("drop", json!("x")).await.unwrap_err();
    assert_eq!(err.code(), Some(roomcast_client::ErrorCode::NotJoined));

    // After a reconnect the room is not asked for again.
    client
        .drop_connection_for_test(Duration::from_millis(50))
        .await;
    let (resumed, _) = connected(&mut events).await;
    assert!(resumed);
    http_publish(gw.addr, "drop", json!("not for carol")).await;
    http_publish(gw.addr, "keep", json!("for carol")).await;
    let got = next_event(&mut events, "a message", |e| match e {
        Event::Message(m) => Some(m.clone()),
        Event::RejoinFailed { room, .. } => panic!("{room} was joined again"),
        _ => None,
    })
    .await;
    assert_eq!((got.room.as_str(), got.data), ("keep", json!("for carol")));
}

#[tokio::test]
async fn a_client_with_no_reachable_node_gives_up_after_max_attempts() {
    let dead = format!("ws://127.0.0.1:{}/ws", free_port());
    let started = Instant::now();
    let err = Client::builder()
        .url(dead)
        .backoff(roomcast_client::Backoff {
            base: Duration::from_millis(10),
            cap: Duration::from_millis(50),
            max_attempts: Some(3),
        })
        .connect()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::GaveUp { attempts: 3, .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

//! `PresenceClient`, the gateway side, against the real service: batching,
//! replay after an outage, the full sync a restarted service asks for, and
//! the queries.

mod common;

use std::time::Duration;

use common::{eventually, seen, Gateway, Listener, Presence, KEY};
use roomcast_presence::api::Op;
use roomcast_presence_client::client::{
    Claimed, ClientOptions, Parked, PresenceClient, PresenceError,
};
use roomcast_testkit::free_port;
use roomcast_testkit::redis::RedisServer;
use serde_json::json;

fn client(presence_url: &str, node: &str, gateway: &Gateway) -> PresenceClient {
    PresenceClient::start(
        presence_url,
        Some(KEY.to_string()),
        node,
        format!("{node}-incarnation"),
        Duration::from_secs(15),
        gateway.snapshot(),
    )
}

async fn members(client: &PresenceClient, room: &str) -> Vec<String> {
    client
        .members(room)
        .await
        .map(|m| m.into_iter().map(|m| m.session).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reported_ops_show_up_in_members_lookup_and_events() {
    let redis = RedisServer::start();
    let presence = Presence::start(&redis.url(), &[]);
    let mut listener = Listener::subscribe(&redis.url(), &["lobby"]).await;
    let gateway = Gateway::default();
    let client = client(&presence.url(), "node-a", &gateway);
    assert!(
        client.flush(Duration::from_secs(5)).await,
        "first full sync"
    );

    gateway.report(&client, Op::connect("s1", "alice", Some(json!({"n": 1}))));
    gateway.report(&client, Op::join("s1", "lobby"));
    gateway.report(&client, Op::connect("s2", "bob", None));
    gateway.report(&client, Op::join("s2", "lobby"));
    assert!(client.flush(Duration::from_secs(5)).await);
    assert_eq!(
        listener.take(2).await,
        [seen("join", "lobby", "s1"), seen("join", "lobby", "s2")]
    );
    let list = client.members("lobby").await.unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].info, Some(json!({"n": 1})));
    let owners = client
        .lookup(&["alice".into()], &["s2".into()])
        .await
        .unwrap();
    assert_eq!(owners.len(), 2);
    assert!(owners.iter().all(|o| o.node == "node-a"));

    client
        .park(
            "s1",
            json!({"rooms": ["lobby"]}),
            Duration::from_secs(30),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        client.take("s1").await.unwrap(),
        Some(json!({"rooms": ["lobby"]}))
    );
    assert_eq!(client.take("s1").await.unwrap(), None);

    let status = client.status();
    assert!(status.connected && status.queued == 0 && !status.full_pending);
    // One full sync, then batches: far fewer requests than ops.
    assert!(presence.metric("roomcast_presence_sync_requests_total") <= 4);
    listener.close().await;
}

/// A resume storm: a thousand lookups at once, each asking for one session
/// (some unknown) or one user. Each gets exactly its own owners, and they
/// share far fewer requests than a thousand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_lookups_share_requests_and_each_gets_its_own_answer() {
    let redis = RedisServer::start();
    let presence = Presence::start(&redis.url(), &[]);
    let gateway = Gateway::default();
    let client = client(&presence.url(), "node-a", &gateway);
    assert!(client.flush(Duration::from_secs(5)).await);
    for i in 0..500 {
        gateway.report(
            &client,
            Op::connect(format!("s{i}"), format!("u{}", i % 100), None),
        );
    }
    assert!(client.flush(Duration::from_secs(5)).await);

    let before = presence.metric("roomcast_presence_lookup_requests_total");
    let asks = (0..1000).map(|i| {
        let client = client.clone();
        tokio::spawn(async move {
            let (users, sessions) = if i % 10 == 9 {
                (vec![format!("u{}", i % 100)], vec![])
            } else {
                (vec![], vec![format!("s{i}")])
            };
            (i, client.lookup(&users, &sessions).await)
        })
    });
    for ask in asks.collect::<Vec<_>>() {
        let (i, owners) = ask.await.unwrap();
        let mut sessions: Vec<String> = owners.unwrap().into_iter().map(|o| o.session).collect();
        sessions.sort();
        let mut expected: Vec<String> = if i % 10 == 9 {
            // User u{i % 100} holds sessions s{i % 100}, s{i % 100 + 100}, ...
            (0..5).map(|k| format!("s{}", i % 100 + 100 * k)).collect()
        } else if i < 500 {
            vec![format!("s{i}")]
        } else {
            Vec::new()
        };
        expected.sort();
        assert_eq!(sessions, expected, "lookup {i}");
    }
    let requests = presence.metric("roomcast_presence_lookup_requests_total") - before;
    assert!(
        (1..=250).contains(&requests),
        "{requests} lookup requests for 1000 lookups"
    );
}

/// A resume storm's takes: a thousand at once, half of them for parked
/// sessions and some for the same session twice. Each parked record goes to
/// exactly one caller, the others get `None`, and the takes share far fewer
/// requests than a thousand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_takes_share_requests_and_each_record_is_taken_once() {
    let redis = RedisServer::start();
    let presence = Presence::start(&redis.url(), &[]);
    let gateway = Gateway::default();
    let client = client(&presence.url(), "node-a", &gateway);
    assert!(client.flush(Duration::from_secs(5)).await);
    for i in 0..400 {
        client
            .park(
                &format!("p{i}"),
                json!({"n": i}),
                Duration::from_secs(60),
                None,
            )
            .await
            .unwrap();
    }
    let before = presence.metric("roomcast_presence_take_requests_total");
    // Sessions p0..p399 are parked; p400..p899 are not; p0..p99 are asked
    // for twice.
    let asks = (0..1000).map(|i| {
        let client = client.clone();
        let session = format!("p{}", if i < 900 { i } else { i - 900 });
        tokio::spawn(async move { (session.clone(), client.take(&session).await.unwrap()) })
    });
    let mut got: std::collections::HashMap<String, Vec<serde_json::Value>> = Default::default();
    for ask in asks.collect::<Vec<_>>() {
        let (session, record) = ask.await.unwrap();
        let entry = got.entry(session).or_default();
        entry.extend(record);
    }
    for i in 0..900 {
        let records = &got[&format!("p{i}")];
        if i < 400 {
            assert_eq!(records, &[json!({"n": i})], "p{i}: taken exactly once");
        } else {
            assert!(records.is_empty(), "p{i} was never parked");
        }
    }
    let requests = presence.metric("roomcast_presence_take_requests_total") - before;
    assert!(
        (1..=250).contains(&requests),
        "{requests} take requests for 1000 takes"
    );
    // All taken: nothing is left to take.
    assert_eq!(client.take("p7").await.unwrap(), None);
}

/// A service on its own Redis and the clients of two nodes, `node-a` and
/// `node-b`.
struct TwoNodes {
    _redis: RedisServer,
    presence: Presence,
    gateways: [Gateway; 2],
    a: PresenceClient,
    b: PresenceClient,
}

impl TwoNodes {
    fn start() -> TwoNodes {
        let redis = RedisServer::start();
        let presence = Presence::start(&redis.url(), &[]);
        let gateways = [Gateway::default(), Gateway::default()];
        let a = client(&presence.url(), "node-a", &gateways[0]);
        let b = client(&presence.url(), "node-b", &gateways[1]);
        TwoNodes {
            _redis: redis,
            presence,
            gateways,
            a,
            b,
        }
    }
}

/// A claim (a resume on the token's word) refuses other nodes' parks of the
/// session until the claiming node parks it itself; a park that came before
/// the claim is taken by it; the mark of an ended session is stored
/// whatever the claims; and concurrent claims share requests with takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claimed_session_is_parked_only_by_its_claiming_node() {
    let nodes = TwoNodes::start();
    let TwoNodes { presence, a, b, .. } = &nodes;
    let ttl = Duration::from_secs(60);

    // node-b resumes s1 on the token's word: nothing was parked.
    assert_eq!(b.claim("s1", ttl).await.unwrap(), Claimed::default());
    // node-a's connection of it ends after that: its park is refused.
    assert_eq!(
        a.park("s1", json!({"by": "a"}), ttl, Some("alice"))
            .await
            .unwrap(),
        Parked::Superseded
    );
    assert_eq!(a.take("s1").await.unwrap(), None, "a copy was parked");
    assert_eq!(
        presence.metric("roomcast_presence_session_parks_superseded_total"),
        1
    );
    // node-b's own park is stored and ends the claim.
    assert_eq!(
        b.park("s1", json!({"by": "b"}), ttl, Some("alice"))
            .await
            .unwrap(),
        Parked::Stored
    );
    assert_eq!(a.take("s1").await.unwrap(), Some(json!({"by": "b"})));
    assert_eq!(
        a.park("s1", json!({"by": "a again"}), ttl, None)
            .await
            .unwrap(),
        Parked::Stored,
        "the claim outlived the claiming node's park"
    );
    assert_eq!(b.take("s1").await.unwrap(), Some(json!({"by": "a again"})));

    // A park that lands before the claim is what the claim takes.
    a.park("s2", json!({"by": "a"}), ttl, None).await.unwrap();
    assert_eq!(
        b.claim("s2", ttl).await.unwrap().record,
        Some(json!({"by": "a"}))
    );
    assert_eq!(
        a.park("s2", json!({"by": "a"}), ttl, None).await.unwrap(),
        Parked::Superseded
    );

    // The mark of an ended session goes in whoever holds a claim.
    assert_eq!(b.claim("s3", ttl).await.unwrap().record, None);
    a.mark("s3", json!({"ended": true}), ttl).await.unwrap();
    assert_eq!(b.take("s3").await.unwrap(), Some(json!({"ended": true})));

    // A claim lasts its TTL, no longer.
    assert_eq!(
        b.claim("s4", Duration::from_millis(200))
            .await
            .unwrap()
            .record,
        None
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        a.park("s4", json!({"by": "a"}), ttl, None).await.unwrap(),
        Parked::Stored
    );

    // Parks asked at once share requests too.
    let before = presence.metric("roomcast_presence_park_requests_total");
    let parks = (0..100).map(|i| {
        let a = a.clone();
        tokio::spawn(async move { a.park(&format!("c{i}"), json!({"n": i}), ttl, None).await })
    });
    for park in parks.collect::<Vec<_>>() {
        assert_eq!(park.await.unwrap().unwrap(), Parked::Stored);
    }
    let requests = presence.metric("roomcast_presence_park_requests_total") - before;
    assert!(
        (1..=30).contains(&requests),
        "{requests} park requests for 100 parks"
    );

    // Claims and takes asked at once share requests, and each claim holds.
    let before = presence.metric("roomcast_presence_take_requests_total");
    let asks = (0..200).map(|i| {
        let b = b.clone();
        tokio::spawn(async move {
            let session = format!("c{}", i % 100 + if i % 2 == 0 { 0 } else { 100 });
            let got = if i % 4 < 2 {
                b.claim(&session, ttl).await.map(|c| c.record)
            } else {
                b.take(&session).await
            };
            (session, got.unwrap())
        })
    });
    let mut taken = std::collections::HashMap::new();
    for ask in asks.collect::<Vec<_>>() {
        let (session, record) = ask.await.unwrap();
        if let Some(record) = record {
            assert!(taken.insert(session, record).is_none(), "taken twice");
        }
    }
    assert_eq!(taken.len(), 50, "c0..c99 asked for at even i: {taken:?}");
    let requests = presence.metric("roomcast_presence_take_requests_total") - before;
    assert!((1..=60).contains(&requests), "{requests} requests");
    // The sessions claimed (c0, c4, ... c96; c2, c6, ... were taken
    // plainly, c101.. never parked) refuse node-a's parks, the others
    // take them, in the same batches.
    let parks = (0..100).map(|i| {
        let a = a.clone();
        tokio::spawn(async move { (i, a.park(&format!("c{i}"), json!({}), ttl, None).await) })
    });
    for park in parks.collect::<Vec<_>>() {
        let (i, parked) = park.await.unwrap();
        let want = if i % 4 == 0 {
            Parked::Superseded
        } else {
            Parked::Stored
        };
        assert_eq!(parked.unwrap(), want, "c{i}");
    }
}

/// Two nodes resuming one session on the token's word, one after the
/// other: the second claim names the node of the first, which must be told
/// the session moved on (the service may not list it there yet). A node
/// claiming again displaces nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_names_the_other_node_whose_claim_it_replaced() {
    let redis = RedisServer::start();
    let presence = Presence::start(&redis.url(), &[]);
    let gateways = [Gateway::default(), Gateway::default()];
    let b = client(&presence.url(), "node-b", &gateways[0]);
    let c = client(&presence.url(), "node-c", &gateways[1]);
    let ttl = Duration::from_secs(60);
    let displaced = |claimed: Claimed| claimed.displaced;

    assert_eq!(displaced(b.claim("s1", ttl).await.unwrap()), None);
    assert_eq!(
        displaced(c.claim("s1", ttl).await.unwrap()),
        Some("node-b".to_string())
    );
    assert_eq!(displaced(c.claim("s1", ttl).await.unwrap()), None);
    assert_eq!(
        displaced(b.claim("s1", ttl).await.unwrap()),
        Some("node-c".to_string())
    );
    // The last claim holds: node-c's park is refused, node-b's stored.
    assert_eq!(
        c.park("s1", json!({"by": "c"}), ttl, None).await.unwrap(),
        Parked::Superseded
    );
    assert_eq!(
        presence.metric("roomcast_presence_session_claims_displaced_total"),
        2
    );
    // A plain take leaves the claim alone and names nobody.
    assert_eq!(b.take("s1").await.unwrap(), None);
    assert_eq!(
        c.park("s1", json!({"by": "c"}), ttl, None).await.unwrap(),
        Parked::Superseded
    );
}

/// A resume's one question: the take claims the session for the asking
/// node only where the service lists it under the given user, and answers
/// the nodes listing it; an unlisted session, or one listed under another
/// user, is taken plainly and left unclaimed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn take_or_claim_claims_only_a_session_listed_under_its_user() {
    let nodes = TwoNodes::start();
    let TwoNodes {
        presence,
        gateways: [gateway_a, gateway_b],
        a,
        b,
        ..
    } = &nodes;
    let ttl = Duration::from_secs(60);
    gateway_a.report(a, Op::connect("s1", "alice", None));
    gateway_a.report(a, Op::connect("s2", "alice", None));
    assert!(a.flush(Duration::from_secs(5)).await);
    let listed = |nodes: &[&str]| Some(nodes.iter().map(|n| n.to_string()).collect::<Vec<_>>());

    // Listed on node-a under alice: claimed for node-b.
    let got = b.take_or_claim("s1", "alice", ttl).await.unwrap();
    assert_eq!((got.record, got.listed), (None, listed(&["node-a"])));
    assert_eq!(
        a.park("s1", json!({"by": "a"}), ttl, None).await.unwrap(),
        Parked::Superseded
    );
    // Listed under another user: not claimed, and not listed for it.
    let got = b.take_or_claim("s2", "mallory", ttl).await.unwrap();
    assert_eq!((got.record, got.listed), (None, listed(&[])));
    assert_eq!(
        a.park("s2", json!({"by": "a"}), ttl, None).await.unwrap(),
        Parked::Stored
    );
    // A park that came first is taken, claimed where listed.
    let got = b.take_or_claim("s2", "alice", ttl).await.unwrap();
    assert_eq!(
        (got.record, got.listed),
        (Some(json!({"by": "a"})), listed(&["node-a"]))
    );
    assert_eq!(
        a.park("s2", json!({"by": "a"}), ttl, None).await.unwrap(),
        Parked::Superseded
    );
    // Listed nowhere: a plain take.
    a.park("s3", json!({"by": "a"}), ttl, None).await.unwrap();
    let got = b.take_or_claim("s3", "alice", ttl).await.unwrap();
    assert_eq!(
        (got.record, got.listed),
        (Some(json!({"by": "a"})), listed(&[]))
    );
    assert_eq!(
        a.park("s3", json!({"by": "a"}), ttl, None).await.unwrap(),
        Parked::Stored
    );
    // A second node asking the same names the first as displaced.
    let c = client(&presence.url(), "node-c", gateway_b);
    let got = c.take_or_claim("s1", "alice", ttl).await.unwrap();
    assert_eq!(got.displaced.as_deref(), Some("node-b"));
    // Asked at once with plain takes and claims, in shared requests.
    let before = presence.metric("roomcast_presence_take_requests_total");
    let asks = (0..60).map(|i| {
        let b = b.clone();
        tokio::spawn(async move {
            match i % 3 {
                0 => b.take_or_claim("s1", "alice", ttl).await.unwrap().listed,
                1 => b.claim("s4", ttl).await.unwrap().listed,
                _ => b.take("s5").await.map(|_| None).unwrap(),
            }
        })
    });
    for (i, ask) in asks.collect::<Vec<_>>().into_iter().enumerate() {
        let want = if i % 3 == 0 {
            listed(&["node-a"])
        } else {
            None
        };
        assert_eq!(ask.await.unwrap(), want, "ask {i}");
    }
    let requests = presence.metric("roomcast_presence_take_requests_total") - before;
    assert!((1..=30).contains(&requests), "{requests} requests");
}

/// A client told to keep a record (the gateway's mark of an ended session)
/// reads it on every take, alone or several at once in one request, while
/// every other record is taken once; a client not told so consumes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_record_answers_every_take_until_it_expires() {
    let redis = RedisServer::start();
    let presence = Presence::start(&redis.url(), &[]);
    let gateways = [Gateway::default(), Gateway::default()];
    let ended = json!({"ended": true});
    let mut options = ClientOptions::new(presence.url(), "node-k", "k1");
    options.key = Some(KEY.to_string());
    options.keep = Some(ended.clone());
    let keeper = PresenceClient::start_with(options, gateways[0].snapshot());
    let plain = client(&presence.url(), "node-p", &gateways[1]);
    let ttl = Duration::from_secs(60);

    plain.mark("s1", ended.clone(), ttl).await.unwrap();
    for _ in 0..3 {
        assert_eq!(keeper.take("s1").await.unwrap(), Some(ended.clone()));
    }
    assert_eq!(
        keeper.claim("s1", ttl).await.unwrap().record,
        Some(ended.clone())
    );
    // Asked at once: every caller reads it, in a few requests.
    let asks = (0..50).map(|_| {
        let keeper = keeper.clone();
        tokio::spawn(async move { keeper.take("s1").await.unwrap() })
    });
    for ask in asks.collect::<Vec<_>>() {
        assert_eq!(ask.await.unwrap(), Some(ended.clone()));
    }
    // Any other record is taken once.
    plain
        .park("s2", json!({"user": "alice"}), ttl, None)
        .await
        .unwrap();
    assert_eq!(
        keeper.take("s2").await.unwrap(),
        Some(json!({"user": "alice"}))
    );
    assert_eq!(keeper.take("s2").await.unwrap(), None);
    // A client that keeps nothing takes the mark like any record.
    assert_eq!(plain.take("s1").await.unwrap(), Some(ended.clone()));
    assert_eq!(keeper.take("s1").await.unwrap(), None);
    // A kept mark still expires.
    plain
        .mark("s3", ended.clone(), Duration::from_millis(200))
        .await
        .unwrap();
    assert_eq!(keeper.take("s3").await.unwrap(), Some(ended.clone()));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(keeper.take("s3").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_ops_are_replayed_in_order_after_the_service_was_unreachable() {
    let redis = RedisServer::start();
    let presence = Presence::start(&redis.url(), &[]);
    let mut listener = Listener::subscribe(&redis.url(), &["r1", "r2"]).await;
    let gateway = Gateway::default();
    let mut options = ClientOptions::new(presence.url(), "node-a", "a1");
    options.key = Some(KEY.into());
    options.sync_timeout = Duration::from_millis(300);
    let client = PresenceClient::start_with(options, gateway.snapshot());
    assert!(client.flush(Duration::from_secs(5)).await);

    // The service stops answering (a partition, or a stalled process).
    presence.pause();
    gateway.report(&client, Op::connect("s1", "alice", None));
    gateway.report(&client, Op::join("s1", "r1"));
    gateway.report(&client, Op::leave("s1", "r1"));
    gateway.report(&client, Op::join("s1", "r2"));
    assert!(!client.flush(Duration::from_millis(1_500)).await);
    let status = client.status();
    assert!(!status.connected, "{status:?}");
    assert_eq!(status.queued, 4);

    presence.resume();
    assert!(client.flush(Duration::from_secs(10)).await);
    assert_eq!(
        listener.take(3).await,
        [
            seen("join", "r1", "s1"),
            seen("leave", "r1", "s1"),
            seen("join", "r2", "s1")
        ]
    );
    // Batches re-sent after a lost answer were not applied twice.
    listener.expect_none(Duration::from_millis(500)).await;
    assert_eq!(members(&client, "r2").await, ["s1"]);
    assert!(members(&client, "r1").await.is_empty());
    listener.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_service_gets_the_whole_state_back_silently() {
    let redis = RedisServer::start();
    let port = free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let mut presence = Presence::start(&redis.url(), &[("ROOMCAST_LISTEN", &listen)]);
    let mut listener = Listener::subscribe(&redis.url(), &["lobby", "kitchen"]).await;
    let gateway = Gateway::default();
    let client = client(&presence.url(), "node-a", &gateway);
    assert!(client.flush(Duration::from_secs(5)).await);
    for i in 0..50 {
        let session = format!("s{i}");
        gateway.report(&client, Op::connect(&session, format!("user{i}"), None));
        gateway.report(&client, Op::join(&session, "lobby"));
        if i % 2 == 0 {
            gateway.report(&client, Op::join(&session, "kitchen"));
        }
    }
    assert!(client.flush(Duration::from_secs(5)).await);
    assert_eq!(members(&client, "lobby").await.len(), 50);
    let before = client.status().presence.clone().unwrap();
    // Every join was announced once (and nothing else is on its way).
    assert_eq!(listener.take(75).await.len(), 75);

    presence.restart();
    // The next sync (a renewal, or a new op) gets need_full; the client
    // sends its snapshot, and nobody hears a thing.
    gateway.report(&client, Op::connect("s50", "user50", None));
    let rebuilt = eventually(Duration::from_secs(10), || async {
        members(&client, "lobby").await.len() == 50 && members(&client, "kitchen").await.len() == 25
    })
    .await;
    assert!(
        rebuilt,
        "members after the restart: {:?}",
        members(&client, "lobby").await
    );
    assert_ne!(client.status().presence.unwrap(), before);
    listener.expect_none(Duration::from_millis(800)).await;
    assert_eq!(presence.metric("roomcast_presence_silent_syncs_total"), 1);
    assert!(presence.metric("roomcast_presence_need_full_total") >= 1);

    // Afterwards, changes are announced again.
    gateway.report(&client, Op::join("s50", "lobby"));
    assert_eq!(listener.take(1).await, [seen("join", "lobby", "s50")]);
    listener.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_fail_fast_when_the_service_is_down() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let gateway = Gateway::default();
    let client = client(&url, "node-a", &gateway);
    gateway.report(&client, Op::connect("s1", "alice", None));
    let started = std::time::Instant::now();
    let err = client.members("lobby").await.unwrap_err();
    assert!(matches!(err, PresenceError::Unavailable(_)), "{err:?}");
    assert!(matches!(
        client.take("s1").await,
        Err(PresenceError::Unavailable(_))
    ));
    assert!(started.elapsed() < Duration::from_secs(2));
    // Not yet synced: the first sync is a full one, and the snapshot
    // (taken at each attempt) stands for the ops queued before it.
    let status = client.status();
    assert!(!status.connected && status.full_pending, "{status:?}");

    let redis = RedisServer::start();
    let presence = Presence::start(&redis.url(), &[]);
    let wrong = PresenceClient::start(
        presence.url(),
        Some("wrong".into()),
        "node-b",
        "b1",
        Duration::from_secs(15),
        gateway.snapshot(),
    );
    assert_eq!(
        wrong.members("lobby").await,
        Err(PresenceError::Unauthorized)
    );
}

/// A take whose answer is lost on the way back (the service took the
/// record, the gateway's client timed out) is asked once more with the
/// same token, and the service answers it as it did the first time: the
/// record is not lost with the answer, and is still taken only once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_take_whose_answer_was_lost_gets_its_record_on_the_retry() {
    use roomcast_testkit::proxy::TcpProxy;

    let redis = RedisServer::start();
    let presence = Presence::start(&redis.url(), &[]);
    let proxy = TcpProxy::start(presence.addr).await;
    let gateway = Gateway::default();
    let client = client(&format!("http://{}", proxy.addr), "node-a", &gateway);
    assert!(client.flush(Duration::from_secs(5)).await);
    let record = json!({"user": "alice", "n": 1});
    client
        .park("s1", record.clone(), Duration::from_secs(60), None)
        .await
        .unwrap();

    let taken_before = presence.metric("roomcast_presence_sessions_taken_total");
    proxy.hold_replies();
    let started = std::time::Instant::now();
    let take = tokio::spawn({
        let client = client.clone();
        async move { client.take("s1").await }
    });
    // The first request reached the service and took the record; its
    // answer waits in the proxy until the client's 1 s timeout drops it.
    assert!(
        eventually(Duration::from_secs(5), || async {
            presence.metric("roomcast_presence_sessions_taken_total") > taken_before
        })
        .await,
        "the first request took the record"
    );
    assert_eq!(
        presence.call("POST", "/v1/sessions/s1/take", None).0,
        404,
        "the record is gone from the store"
    );
    // The retry goes out at 1 s, and the service answers it from the
    // kept answer; that one is let through.
    assert!(
        eventually(Duration::from_secs(5), || async {
            presence.metric("roomcast_presence_session_takes_repeated_total") == 1
        })
        .await,
        "no retry reached the service"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    proxy.heal();
    let got = take.await.unwrap();
    assert_eq!(got, Ok(Some(record)), "after {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(
        presence.metric("roomcast_presence_session_takes_repeated_total"),
        1
    );
    assert_eq!(
        presence.metric("roomcast_presence_sessions_taken_total") - taken_before,
        1,
        "taken once, answered twice"
    );
    // Taken for good: a new take (another token) finds nothing.
    assert_eq!(client.take("s1").await.unwrap(), None);
}

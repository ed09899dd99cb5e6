//! The presence service over HTTP, as a real process against a real
//! `redis-server`: syncs, members, lookups, parked sessions, leases and the
//! presence events other nodes hear.

mod common;

use std::time::Duration;

use common::{seen, Listener, Presence, KEY};
use roomcast_testkit::redis::{RedisCluster, RedisServer};
use roomcast_testkit::{binary, Process};
use serde_json::json;

fn connect(session: &str, user: &str) -> serde_json::Value {
    json!({"op": "connect", "session": session, "user": user})
}

fn join(session: &str, room: &str) -> serde_json::Value {
    json!({"op": "join", "session": session, "room": room})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_members_and_lookup_show_where_sessions_live() {
    let redis = RedisServer::start();
    let presence = Presence::start(&redis.url(), &[]);

    // An unknown node is asked for its whole state first.
    let answer = presence.sync(
        "node-a",
        json!({"incarnation": "a1", "ops": [connect("s1", "alice")]}),
    );
    assert_eq!(answer["need_full"], true);
    let incarnation = answer["presence"].as_str().unwrap().to_string();
    assert!(!incarnation.is_empty());
    let answer = presence.sync(
        "node-a",
        json!({"incarnation": "a1", "full": true, "ops": [
            {"op": "connect", "session": "s1", "user": "alice", "info": {"name": "Alice"}},
            join("s1", "lobby"),
        ]}),
    );
    assert_eq!(answer, json!({"presence": incarnation, "need_full": false}));
    presence.sync(
        "node-b",
        json!({"incarnation": "b1", "full": true, "ops": [
            connect("s2", "bob"), join("s2", "lobby"), connect("s3", "alice"),
        ]}),
    );

    let (status, body) = presence.call("GET", "/v1/rooms/lobby/members", None);
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"room": "lobby", "members": [
            {"user": "alice", "session": "s1", "info": {"name": "Alice"}},
            {"user": "bob", "session": "s2"},
        ]})
    );
    assert!(presence.members("empty-room").is_empty());

    let (status, body) = presence.call(
        "POST",
        "/v1/lookup",
        Some(json!({"users": ["alice"], "sessions": ["s2", "nobody"]})),
    );
    assert_eq!(status, 200);
    let mut owners: Vec<(String, String)> = body["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["session"].as_str().unwrap().to_string(),
                o["node"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    owners.sort();
    assert_eq!(
        owners,
        [
            ("s1".to_string(), "node-a".to_string()),
            ("s2".to_string(), "node-b".to_string()),
            ("s3".to_string(), "node-b".to_string())
        ]
    );

    // Deltas from a known node apply; the key is required.
    presence.sync(
        "node-a",
        json!({"incarnation": "a1", "ops": [{"op": "leave", "session": "s1", "room": "lobby"}]}),
    );
    assert_eq!(presence.members("lobby"), ["s2"]);
    let (status, body) = presence.call_with("GET", "/v1/rooms/lobby/members", None, None);
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("unauthorized"))
    );
    let (status, _) = presence.call_with("GET", "/v1/rooms/lobby/members", None, Some("wrong"));
    assert_eq!(status, 401);
    let (status, _) = presence.call(
        "POST",
        "/v1/nodes/bad%20node/sync",
        Some(json!({"incarnation": "x"})),
    );
    assert_eq!(status, 400);

    // Operations need no key.
    let (status, _) = presence.call_with("GET", "/healthz", None, None);
    assert_eq!(status, 200);
    let ready = roomcast_testkit::wait_until(Duration::from_secs(5), || {
        presence.call_with("GET", "/readyz", None, None).0 == 200
    });
    assert!(ready, "readyz");
    assert_eq!(presence.metric("roomcast_presence_nodes"), 2);
    assert_eq!(presence.metric("roomcast_presence_sessions"), 3);
    assert_eq!(presence.metric("roomcast_presence_rooms"), 1);
    assert_eq!(presence.metric("roomcast_presence_need_full_total"), 1);
    assert_eq!(presence.metric("roomcast_presence_unauthorized_total"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_session_is_taken_exactly_once_even_across_a_presence_restart() {
    let redis = RedisServer::start();
    let mut presence = Presence::start(&redis.url(), &[]);
    let record = json!({"user": "alice", "rooms": [{"room": "lobby", "offset": 41}]});
    let (status, _) = presence.call(
        "PUT",
        "/v1/sessions/s1",
        Some(json!({"record": record, "ttl_ms": 60_000})),
    );
    assert_eq!(status, 204);
    let ttl: i64 = redis.cmd(&["PTTL", "rc:{sess:s1}"]).parse().unwrap();
    assert!(ttl > 50_000 && ttl <= 60_000, "PTTL {ttl}");

    presence.restart();

    // Eight nodes race to resume the session: exactly one gets it.
    let addr = presence.addr;
    let takers: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                let auth = format!("Bearer {KEY}");
                roomcast_testkit::http_request(
                    addr,
                    "POST",
                    "/v1/sessions/s1/take",
                    &[("Authorization", &auth)],
                    "",
                )
                .expect("take")
            })
        })
        .collect();
    let answers: Vec<(u16, String)> = takers.into_iter().map(|t| t.join().unwrap()).collect();
    let won: Vec<&(u16, String)> = answers.iter().filter(|(s, _)| *s == 200).collect();
    assert_eq!(won.len(), 1, "{answers:?}");
    assert_eq!(answers.iter().filter(|(s, _)| *s == 404).count(), 7);
    let body: serde_json::Value = serde_json::from_str(&won[0].1).unwrap();
    assert_eq!(body, json!({"record": record}));

    // An expired record is gone too.
    presence.call(
        "PUT",
        "/v1/sessions/s2",
        Some(json!({"record": 1, "ttl_ms": 50})),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, body) = presence.call("POST", "/v1/sessions/s2/take", None);
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
    let (status, _) = presence.call(
        "PUT",
        "/v1/sessions/s3",
        Some(json!({"record": 1, "ttl_ms": 0})),
    );
    assert_eq!(status, 400);
    // A batched take checks every name and the batch size.
    let (status, body) = presence.call("POST", "/v1/take", Some(json!({"sessions": ["ok", ""]})));
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")));
    let many: Vec<String> = (0..=roomcast_presence::server::MAX_LOOKUP)
        .map(|i| format!("s{i}"))
        .collect();
    let (status, body) = presence.call("POST", "/v1/take", Some(json!({ "sessions": many })));
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")));
    let (status, _) = presence.call("POST", "/v1/take", Some(json!({"nope": 1})));
    assert!(status == 400 || status == 422, "{status}");
}

/// The API's disconnect of a user reaches the sessions it left parked: a
/// record parked with its user is listed under that user, and ending the
/// user replaces its records that are still parked, and no one else's,
/// with the record given (the gateway's mark of an ended session).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ending_a_user_replaces_the_records_it_left_parked_and_no_others() {
    let redis = RedisServer::start();
    let presence = Presence::start(&redis.url(), &[]);
    let park = |session: &str, user: Option<&str>, ttl_ms: u64| {
        let mut body = json!({"record": {"s": session}, "ttl_ms": ttl_ms});
        if let Some(user) = user {
            body["user"] = json!(user);
        }
        let (status, body) = presence.call("PUT", &format!("/v1/sessions/{session}"), Some(body));
        assert_eq!(status, 204, "{body}");
    };
    // Braces in a name are escaped in its key: two names never share one.
    park("a1", Some("al{ce}"), 60_000);
    park("a3", Some("al{ce}"), 60_000);
    park("a2", Some("al{ce}"), 120_000);
    park("b1", Some("al%7Bce%7D"), 60_000);
    park("c1", None, 60_000);
    // The listing lives as long as the last record parked in it.
    let ttl: i64 = redis
        .cmd(&["PTTL", "rc:{user:al%7Bce%7D}"])
        .parse()
        .unwrap();
    assert!(ttl > 110_000, "PTTL {ttl}");
    assert_eq!(redis.cmd(&["SCARD", "rc:{user:al%257Bce%257D}"]), "1");
    // a3 resumed meanwhile: ending the user leaves it without a record.
    let (status, _) = presence.call("POST", "/v1/sessions/a3/take", None);
    assert_eq!(status, 200);

    let mark = json!({"ended": true});
    let end = json!({"record": mark, "ttl_ms": 30_000});
    let (status, body) = presence.call("POST", "/v1/users/al%7Bce%7D/end", Some(end.clone()));
    assert_eq!((status, body), (200, json!({"ended": 2})));
    for (session, record) in [
        ("a1", Some(mark.clone())),
        ("a2", Some(mark.clone())),
        ("a3", None),
        ("b1", Some(json!({"s": "b1"}))),
        ("c1", Some(json!({"s": "c1"}))),
    ] {
        let (status, body) = presence.call("POST", &format!("/v1/sessions/{session}/take"), None);
        match record {
            Some(record) => assert_eq!((status, body), (200, json!({ "record": record }))),
            None => assert_eq!(status, 404, "{session}: {body}"),
        }
    }
    assert_eq!(redis.cmd(&["EXISTS", "rc:{user:al%7Bce%7D}"]), "0");
    let (status, body) = presence.call("POST", "/v1/users/al%7Bce%7D/end", Some(end));
    assert_eq!((status, body), (200, json!({"ended": 0})));
    let (status, body) = presence.call(
        "POST",
        "/v1/users/x/end",
        Some(json!({"record": 1, "ttl_ms": 0})),
    );
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_lease_expires_has_its_sessions_purged_with_leave_events() {
    let redis = RedisServer::start();
    let presence = Presence::start(&redis.url(), &[]);
    let mut listener = Listener::subscribe(&redis.url(), &["lobby", "kitchen"]).await;

    presence.sync(
        "node-a",
        json!({"incarnation": "a1", "full": true, "lease_ms": 1_000}),
    );
    presence.sync(
        "node-a",
        json!({"incarnation": "a1", "lease_ms": 1_000, "ops": [
            connect("s1", "alice"), join("s1", "lobby"), join("s1", "kitchen"),
            connect("s2", "bob"), join("s2", "lobby"),
        ]}),
    );
    assert_eq!(
        listener.take(3).await,
        [
            seen("join", "lobby", "s1"),
            seen("join", "kitchen", "s1"),
            seen("join", "lobby", "s2")
        ]
    );
    // Node a stops syncing (it crashed): after its lease, its sessions go.
    let mut leaves = listener.take(3).await;
    leaves.sort_by(|a, b| (&a.session, &a.room).cmp(&(&b.session, &b.room)));
    assert_eq!(
        leaves,
        [
            seen("leave", "kitchen", "s1"),
            seen("leave", "lobby", "s1"),
            seen("leave", "lobby", "s2")
        ]
    );
    assert!(presence.members("lobby").is_empty());
    assert_eq!(presence.metric("roomcast_presence_purges_total"), 1);
    assert_eq!(
        presence.metric("roomcast_presence_sessions_purged_total"),
        2
    );
    // The node comes back: it is unknown now, and asked for a full sync.
    let answer = presence.sync("node-a", json!({"incarnation": "a1"}));
    assert_eq!(answer["need_full"], true);
    listener.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handoff_taken_within_grace_emits_no_events_and_an_untaken_one_leaves() {
    let redis = RedisServer::start();
    let presence = Presence::start(&redis.url(), &[]);
    let mut listener = Listener::subscribe(&redis.url(), &["lobby"]).await;
    presence.sync(
        "node-a",
        json!({"incarnation": "a1", "full": true, "lease_ms": 1_000}),
    );
    presence.sync("node-b", json!({"incarnation": "b1", "full": true}));
    presence.sync(
        "node-a",
        json!({"incarnation": "a1", "lease_ms": 1_000, "ops": [
            connect("s1", "alice"), join("s1", "lobby"),
            connect("s2", "bob"), join("s2", "lobby"),
        ]}),
    );
    assert_eq!(
        listener.take(2).await,
        [seen("join", "lobby", "s1"), seen("join", "lobby", "s2")]
    );

    // Node a drains: hands both over, then closes the sockets (its late
    // leave/disconnect ops must change nothing), then exits (lease ends).
    presence.sync(
        "node-a",
        json!({"incarnation": "a1", "lease_ms": 1_000, "ops": [
            {"op": "handoff", "session": "s1", "grace_ms": 10_000},
            {"op": "handoff", "session": "s2", "grace_ms": 2_500},
            {"op": "leave", "session": "s1", "room": "lobby"},
            {"op": "disconnect", "session": "s1"},
        ]}),
    );
    // s1's client resumes on node b within the grace.
    presence.sync(
        "node-b",
        json!({"incarnation": "b1", "ops": [connect("s1", "alice"), join("s1", "lobby")]}),
    );
    assert_eq!(presence.members("lobby"), ["s1", "s2"]);
    // Node a's lease expires (1 s) with no event; s2, never taken, leaves
    // at the end of its grace (2.5 s), and only then.
    let first = listener.next(Duration::from_secs(6)).await;
    assert_eq!(first, Some(seen("leave", "lobby", "s2")));
    listener.expect_none(Duration::from_millis(1_000)).await;
    assert_eq!(presence.members("lobby"), ["s1"]);
    assert_eq!(
        presence.metric("roomcast_presence_handoffs_expired_total"),
        1
    );

    let (_, body) = presence.call("POST", "/v1/lookup", Some(json!({"users": ["alice"]})));
    assert_eq!(body["sessions"][0]["node"], "node-b");
    listener.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_events_use_sharded_pubsub_on_a_redis_cluster() {
    let cluster = RedisCluster::start();
    let presence = Presence::start(&cluster.url(), &[]);
    let rooms = ["lobby", "kitchen", "garden", "attic"];
    let mut listener = Listener::subscribe(&cluster.url(), &rooms).await;
    presence.sync("node-a", json!({"incarnation": "a1", "full": true}));
    let mut ops = vec![connect("s1", "alice")];
    ops.extend(rooms.iter().map(|r| join("s1", r)));
    presence.sync("node-a", json!({"incarnation": "a1", "ops": ops}));
    let mut got: Vec<String> = listener
        .take(rooms.len())
        .await
        .into_iter()
        .map(|e| e.room)
        .collect();
    got.sort();
    let mut want: Vec<String> = rooms.iter().map(|r| r.to_string()).collect();
    want.sort();
    assert_eq!(got, want);

    // Parked sessions work on the cluster too.
    let (status, _) = presence.call(
        "PUT",
        "/v1/sessions/s1",
        Some(json!({"record": {"a": 1}, "ttl_ms": 10_000})),
    );
    assert_eq!(status, 204);
    let (status, body) = presence.call("POST", "/v1/sessions/s1/take", None);
    assert_eq!((status, body), (200, json!({"record": {"a": 1}})));
    // A batched take spans slots (each session key has its own).
    for s in ["s2", "s3", "s4", "s5"] {
        let (status, _) = presence.call(
            "PUT",
            &format!("/v1/sessions/{s}"),
            Some(json!({"record": {"s": s}, "ttl_ms": 10_000})),
        );
        assert_eq!(status, 204);
    }
    let (status, body) = presence.call(
        "POST",
        "/v1/take",
        Some(json!({"sessions": ["s2", "s3", "s4", "s5", "s1", "nobody"]})),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"records": {"s2": {"s": "s2"}, "s3": {"s": "s3"}, "s4": {"s": "s4"}, "s5": {"s": "s5"}}})
    );
    let (status, body) = presence.call("POST", "/v1/take", Some(json!({"sessions": ["s2"]})));
    assert_eq!((status, body), (200, json!({"records": {}})));
    // Claims span slots too, and a claimed session's park by another node
    // is refused on whichever shard holds it (the park's script runs in
    // the record's slot).
    let claims = ["k1", "k2", "k3", "k4", "k5", "k6"];
    let (status, body) = presence.call(
        "POST",
        "/v1/take",
        Some(json!({"sessions": [], "claims": claims, "node": "node-b", "claim_ms": 10_000})),
    );
    assert_eq!((status, body), (200, json!({"records": {}})));
    for s in claims {
        let park = |node: &str| {
            presence.call(
                "PUT",
                &format!("/v1/sessions/{s}"),
                Some(json!({"record": {"by": node}, "ttl_ms": 10_000, "node": node})),
            )
        };
        let (status, body) = park("node-a");
        assert_eq!(status, 409, "{s}: {body}");
        assert_eq!(body["error"], "superseded");
        assert_eq!(park("node-b").0, 204, "{s}");
        assert_eq!(
            park("node-a").0,
            204,
            "{s}: the claim outlived its holder's park"
        );
    }
    // Batched parks span slots, and each claimed session in them is
    // refused on its own shard.
    let (status, body) = presence.call(
        "POST",
        "/v1/take",
        Some(json!({"sessions": [], "claims": ["k1", "k4"], "node": "node-b", "claim_ms": 10_000})),
    );
    let by_a = json!({"by": "node-a"});
    assert_eq!(
        (status, body),
        (200, json!({"records": {"k1": by_a, "k4": by_a}}))
    );
    let parks: Vec<_> = claims
        .iter()
        .map(|s| json!({"session": s, "record": {"b": s}, "ttl_ms": 10_000, "user": "carol"}))
        .collect();
    let (status, body) = presence.call(
        "POST",
        "/v1/park",
        Some(json!({"node": "node-a", "parks": parks})),
    );
    assert_eq!((status, body), (200, json!({"superseded": ["k1", "k4"]})));
    let (status, body) = presence.call("POST", "/v1/take", Some(json!({"sessions": claims})));
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"records": {"k2": {"b": "k2"}, "k3": {"b": "k3"}, "k5": {"b": "k5"}, "k6": {"b": "k6"}}})
    );
    // Another node's claim of k1 and k4, still node-b's, names node-b as
    // displaced, on each one's shard.
    let (status, body) = presence.call(
        "POST",
        "/v1/take",
        Some(json!({"sessions": [], "claims": ["k1", "k4", "k5"], "node": "node-c", "claim_ms": 10_000})),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["displaced"], json!({"k1": "node-b", "k4": "node-b"}));
    // A record equal to `keep` is read and left in place, on every shard.
    let ended = json!({"ended": true});
    for s in ["m1", "m2", "m3"] {
        let (status, _) = presence.call(
            "PUT",
            &format!("/v1/sessions/{s}"),
            Some(json!({"record": ended, "ttl_ms": 10_000})),
        );
        assert_eq!(status, 204);
    }
    let marks = json!({"records": {"m1": ended, "m2": ended, "m3": ended}});
    for _ in 0..2 {
        let (status, body) = presence.call(
            "POST",
            "/v1/take",
            Some(json!({"sessions": ["m1", "m2", "m3"], "keep": ended})),
        );
        assert_eq!((status, body), (200, marks.clone()));
    }
    let (status, body) = presence.call(
        "POST",
        "/v1/take",
        Some(json!({"sessions": ["m1", "m2", "m3"]})),
    );
    assert_eq!((status, body), (200, marks));
    let (status, body) = presence.call(
        "POST",
        "/v1/take",
        Some(json!({"sessions": ["m1", "m2", "m3"], "keep": ended})),
    );
    assert_eq!((status, body), (200, json!({"records": {}})));
    // A take with a token keeps its answer in each session's slot: the
    // same token asking again gets it back (records, displaced claims),
    // leaving the store alone; another token, or none, finds the records
    // gone.
    for s in ["t1", "t2", "t3"] {
        let (status, _) = presence.call(
            "PUT",
            &format!("/v1/sessions/{s}"),
            Some(json!({"record": {"t": s}, "ttl_ms": 10_000})),
        );
        assert_eq!(status, 204);
    }
    let (status, _) = presence.call(
        "POST",
        "/v1/take",
        Some(json!({"sessions": [], "claims": ["t4"], "node": "node-c", "claim_ms": 10_000})),
    );
    assert_eq!(status, 200);
    let take = |token: Option<&str>| {
        presence.call(
            "POST",
            "/v1/take",
            Some(json!({
                "sessions": ["t1", "t2", "t3", "t4"], "claims": ["t3", "t4"],
                "node": "node-d", "claim_ms": 10_000, "token": token,
            })),
        )
    };
    let repeats_before = presence.metric("roomcast_presence_session_takes_repeated_total");
    let first = json!({
        "records": {"t1": {"t": "t1"}, "t2": {"t": "t2"}, "t3": {"t": "t3"}},
        "displaced": {"t4": "node-c"},
    });
    assert_eq!(take(Some("tok-1")), (200, first.clone()));
    assert_eq!(take(Some("tok-1")), (200, first), "the same answer again");
    assert_eq!(
        presence.metric("roomcast_presence_session_takes_repeated_total") - repeats_before,
        4
    );
    assert_eq!(take(Some("tok-2")), (200, json!({"records": {}})));
    assert_eq!(take(None), (200, json!({"records": {}})));
    let (status, body) = presence.call(
        "POST",
        "/v1/take",
        Some(json!({"sessions": ["t1"], "token": "{t}"})),
    );
    assert_eq!(status, 400, "{body}");
    for bad in [
        json!({"parks": [{"session": "k{1}", "record": 1, "ttl_ms": 10}]}),
        json!({"parks": [{"session": "k1", "record": 1, "ttl_ms": 0}]}),
        json!({"node": "", "parks": []}),
        json!({"parks": [{"session": "k1"}]}),
    ] {
        let (status, body) = presence.call("POST", "/v1/park", Some(bad.clone()));
        assert!(matches!(status, 400 | 422), "{bad}: {status} {body}");
    }
    // Claims need their node and duration.
    for bad in [
        json!({"sessions": [], "claims": ["k1"]}),
        json!({"sessions": [], "claims": ["k1"], "node": "node-b"}),
        json!({"sessions": [], "claims": ["k1"], "node": "node-b", "claim_ms": 0}),
        json!({"sessions": [], "claims": ["k{1}"], "node": "node-b", "claim_ms": 10}),
        json!({"sessions": [], "claims_if_listed": [{"session": "k1", "user": "u"}]}),
        json!({"sessions": [], "claims_if_listed": [{"session": "k{1}", "user": "u"}],
            "node": "node-b", "claim_ms": 10}),
    ] {
        let (status, body) = presence.call("POST", "/v1/take", Some(bad.clone()));
        assert_eq!(status, 400, "{bad}: {body}");
    }
    // Ending a user spans slots too: its listing has one, each record its own.
    for s in ["u1", "u2", "u3"] {
        let (status, _) = presence.call(
            "PUT",
            &format!("/v1/sessions/{s}"),
            Some(json!({"record": {"s": s}, "ttl_ms": 10_000, "user": "alice"})),
        );
        assert_eq!(status, 204);
    }
    let (status, body) = presence.call(
        "POST",
        "/v1/users/alice/end",
        Some(json!({"record": {"ended": true}, "ttl_ms": 10_000})),
    );
    assert_eq!((status, body), (200, json!({"ended": 3})));
    let (status, body) = presence.call(
        "POST",
        "/v1/take",
        Some(json!({"sessions": ["u1", "u2", "u3"]})),
    );
    let ended = json!({"ended": true});
    assert_eq!(
        (status, body),
        (
            200,
            json!({"records": {"u1": ended, "u2": ended, "u3": ended}})
        )
    );
    listener.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_wait_for_redis_to_come_back_and_requests_never_block_on_it() {
    let mut redis = RedisServer::start();
    let presence = Presence::start(&redis.url(), &[]);
    presence.sync("node-a", json!({"incarnation": "a1", "full": true}));
    redis.stop();

    let started = std::time::Instant::now();
    presence.sync(
        "node-a",
        json!({"incarnation": "a1", "ops": [
            connect("s1", "alice"), join("s1", "lobby"), join("s1", "kitchen"),
            {"op": "disconnect", "session": "s1"},
        ]}),
    );
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "sync waited on Redis"
    );
    let (status, body) = presence.call("POST", "/v1/sessions/s1/take", None);
    assert_eq!((status, body["error"].as_str()), (503, Some("unavailable")));
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(presence.metric("roomcast_presence_events_queued"), 4);
    assert_eq!(
        presence.metric("roomcast_presence_events_published_total"),
        0
    );
    assert_eq!(presence.metric("roomcast_presence_redis_connected"), 0);
    assert!(presence.metric("roomcast_presence_redis_errors_total") >= 1);
    let (status, _) = presence.call_with("GET", "/readyz", None, None);
    assert_eq!(status, 503);

    redis.restart();
    let drained = roomcast_testkit::wait_until(Duration::from_secs(15), || {
        presence.metric("roomcast_presence_events_queued") == 0
    });
    assert!(drained, "{}", presence.process.output());
    assert_eq!(
        presence.metric("roomcast_presence_events_published_total"),
        4
    );
    assert_eq!(presence.metric("roomcast_presence_events_dropped_total"), 0);
}

#[test]
fn a_missing_redis_url_stops_startup_naming_the_key() {
    let mut process = Process::spawn(
        "presence",
        &binary("roomcast-presence"),
        &[],
        &[("ROOMCAST_LISTEN", "127.0.0.1:0".to_string())],
    );
    assert_eq!(process.wait_exit(Duration::from_secs(10)), Some(Some(2)));
    assert!(
        process.output().contains("redis.url"),
        "{}",
        process.output()
    );

    let mut process = Process::spawn(
        "presence",
        &binary("roomcast-presence"),
        &[],
        &[
            ("ROOMCAST_REDIS__URL", "redis://127.0.0.1:1".to_string()),
            ("ROOMCAST_LEASE__DEFAULT_MS", "soon".to_string()),
        ],
    );
    assert_eq!(process.wait_exit(Duration::from_secs(10)), Some(Some(2)));
    assert!(
        process.output().contains("lease.default_ms"),
        "{}",
        process.output()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_given_as_files_are_read_from_them_and_a_missing_one_stops_startup() {
    let redis = RedisServer::start();
    let dir =
        std::env::temp_dir().join(format!("roomcast-presence-secrets-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key_file = dir.join("key");
    let url_file = dir.join("url");
    // Mounted secrets usually end with a newline: it is not part of the value.
    std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
    std::fs::write(&url_file, format!("{}\n", redis.url())).unwrap();
    let key_ref = format!("file:{}", key_file.display());
    let url_ref = format!("file:{}", url_file.display());
    let presence = Presence::start(
        "unused",
        &[
            ("ROOMCAST_PRESENCE__KEY", key_ref.as_str()),
            ("ROOMCAST_REDIS__URL", url_ref.as_str()),
        ],
    );
    // The key from the file is the key; the URL from the file reaches Redis.
    presence.sync(
        "node-a",
        json!({"incarnation": "a1", "ops": [connect("s1", "alice")]}),
    );
    presence.sync(
        "node-a",
        json!({"incarnation": "a1", "full": true, "ops": [connect("s1", "alice"), join("s1", "lobby")]}),
    );
    assert_eq!(presence.members("lobby"), ["s1"]);
    let (status, _) = presence.call_with("GET", "/v1/rooms/lobby/members", None, Some(&key_ref));
    assert_eq!(status, 401, "the file reference itself is not the key");
    let ready = roomcast_testkit::wait_until(Duration::from_secs(5), || {
        presence.call_with("GET", "/readyz", None, None).0 == 200
    });
    assert!(ready, "readyz with the Redis URL from a file");
    drop(presence);

    let missing = dir.join("missing");
    let mut process = Process::spawn(
        "presence",
        &binary("roomcast-presence"),
        &[],
        &[
            ("ROOMCAST_LISTEN", "127.0.0.1:0".to_string()),
            ("ROOMCAST_REDIS__URL", redis.url()),
            (
                "ROOMCAST_PRESENCE__KEY",
                format!("file:{}", missing.display()),
            ),
        ],
    );
    assert_eq!(process.wait_exit(Duration::from_secs(10)), Some(Some(2)));
    let output = process.output();
    assert!(
        output.contains("presence.key") && output.contains("cannot read secret file"),
        "{output}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_service_cleanly() {
    let redis = RedisServer::start();
    let mut presence = Presence::start(&redis.url(), &[]);
    presence.process.signal("TERM");
    assert_eq!(
        presence.process.wait_exit(Duration::from_secs(10)),
        Some(Some(0)),
        "{}",
        presence.process.output()
    );
}

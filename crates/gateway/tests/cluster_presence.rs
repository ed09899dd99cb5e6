//! A cluster with the presence service: cluster-wide presence, direct sends
//! routed only to owning nodes, crash and drain with no loss and no
//! duplicate, no presence flap on drain, and presence surviving the
//! restart of its own service.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use roomcast_client::{Backoff, Client, Event};
use roomcast_protocol::{ClientFrame, Codec, ServerFrame, Target};
use roomcast_testkit::proxy::TcpProxy;
use roomcast_testkit::redis::RedisServer;
use roomcast_testkit::ws::{
    close_and_resume_at_once, join, join_watching, joined, resume_hello,
    resume_over_a_lingering_connection, RawClient,
};
use roomcast_testkit::{http_request, wait_until, Gateway, PresenceService};
use serde_json::json;

const KEY: (&str, &str) = ("Authorization", "Bearer test-key");

struct Cluster {
    redis: RedisServer,
    presence: PresenceService,
    nodes: Vec<Gateway>,
}

fn gateway(redis: &str, presence: &str, id: &str) -> Gateway {
    Gateway::start(&[
        ("ROOMCAST_REDIS__URL", redis),
        ("ROOMCAST_PRESENCE__URL", presence),
        ("ROOMCAST_PRESENCE__LEASE_MS", "3000"),
        ("ROOMCAST_PRESENCE__HANDOFF_GRACE_MS", "15000"),
        ("ROOMCAST_NODE__ID", id),
        ("ROOMCAST_AUTH__RESUME_SECRET", "presence-test-secret"),
        ("ROOMCAST_DRAIN__WINDOW_MS", "1000"),
        ("ROOMCAST_DRAIN__TIMEOUT_MS", "8000"),
        ("ROOMCAST_HISTORY__SIZE", "2000"),
    ])
}

fn cluster(nodes: usize) -> Cluster {
    let redis = RedisServer::start();
    let presence = PresenceService::start(&redis.url(), &[]);
    let nodes = (0..nodes)
        .map(|i| gateway(&redis.url(), &presence.url(), &format!("node-{i}")))
        .collect();
    Cluster {
        redis,
        presence,
        nodes,
    }
}

fn metric(gw: &Gateway, line_prefix: &str) -> u64 {
    gw.metric(line_prefix)
}

fn presence_sessions(gw: &Gateway, room: &str) -> HashSet<String> {
    let (status, body) =
        http_request(gw.addr, "GET", &format!("/api/presence/{room}"), &[KEY], "").unwrap();
    if status != 200 {
        return HashSet::new();
    }
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["session"].as_str().unwrap().to_string())
        .collect()
}

fn session(welcome: &ServerFrame) -> (String, String) {
    match welcome {
        ServerFrame::Welcome { session, user, .. } => (session.clone(), user.clone()),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_lists_every_node_and_direct_sends_go_only_to_the_owning_node() {
    let c = cluster(3);
    let mut sessions = HashSet::new();
    let mut clients = Vec::new();
    for gw in &c.nodes {
        let (mut client, welcome) = RawClient::ready(&gw.ws_url(), Codec::Json).await;
        client.request(join(1, "p")).await;
        sessions.insert(session(&welcome).0);
        clients.push((client, welcome));
    }
    // Any node lists the members of all nodes.
    for gw in &c.nodes {
        assert!(
            wait_until(Duration::from_secs(5), || presence_sessions(gw, "p")
                == sessions),
            "presence on {} is {:?}, want {:?}",
            gw.addr,
            presence_sessions(gw, "p"),
            sessions
        );
    }
    let (bob_session, bob_user) = session(&clients[1].1);
    let alice = &mut clients[0].0;
    for to in [Target::user(bob_user), Target::session(bob_session)] {
        let ack = alice
            .request(ClientFrame::Send {
                id: Some(7),
                to,
                data: json!("psst"),
            })
            .await;
        assert_eq!(
            ack,
            ServerFrame::Ack {
                id: 7,
                offset: None,
                duplicate: false
            }
        );
    }
    let bob = &mut clients[1].0;
    for _ in 0..2 {
        let data = bob
            .recv_until(|f| match f {
                ServerFrame::Direct { data, .. } => Some(data.clone()),
                _ => None,
            })
            .await;
        assert_eq!(data, json!("psst"));
    }
    // Published only to the owner's channel: node 1 got both, node 2 none.
    let (_, text) = http_request(c.nodes[0].addr, "GET", "/metrics", &[], "").unwrap();
    let routed: Vec<&str> = text.lines().filter(|l| l.contains("routed")).collect();
    assert_eq!(
        metric(
            &c.nodes[0],
            "roomcast_control_routed_total{route=\"owner\"}"
        ),
        2,
        "{routed:?}"
    );
    assert_eq!(
        metric(&c.nodes[0], "roomcast_control_routed_total{route=\"all\"}"),
        0
    );
    assert_eq!(metric(&c.nodes[1], "roomcast_control_received_total"), 2);
    assert_eq!(metric(&c.nodes[2], "roomcast_control_received_total"), 0);
}

/// A client-library client that records every room message offset.
async fn recording_client(
    urls: Vec<String>,
    room: &'static str,
) -> (Client, tokio::task::JoinHandle<Vec<u64>>, String) {
    let (client, mut events) = Client::builder()
        .urls(urls)
        .backoff(Backoff {
            base: Duration::from_millis(50),
            cap: Duration::from_millis(500),
            max_attempts: None,
        })
        .connect()
        .await
        .expect("connect");
    client.join(room).await.expect("join");
    let session = client.session().map(|s| s.session).unwrap_or_default();
    let recorder = tokio::spawn(async move {
        let mut offsets = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_secs(3), events.recv()).await {
                Ok(Some(Event::Message(m))) => {
                    offsets.push(m.offset);
                    if m.data == json!("end") {
                        break;
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        offsets
    });
    (client, recorder, session)
}

/// Publishes `n` messages over the API of `gw` (then an "end" marker).
async fn publish_steadily(addr: std::net::SocketAddr, room: &str, n: usize) {
    for i in 0..n {
        let body = format!(r#"{{"room":"{room}","data":{i}}}"#);
        let (status, text) = http_request(addr, "POST", "/api/publish", &[KEY], &body).unwrap();
        assert_eq!(status, 200, "{text}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let body = format!(r#"{{"room":"{room}","data":"end"}}"#);
    http_request(addr, "POST", "/api/publish", &[KEY], &body).unwrap();
}

fn assert_exactly_once(offsets: &[u64], total: u64, who: &str) {
    let expected: Vec<u64> = (1..=total).collect();
    assert_eq!(offsets, &expected[..], "{who}: lost or duplicated messages");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_s_clients_resume_elsewhere_with_nothing_lost_and_its_ghosts_leave_presence()
{
    let mut c = cluster(3);
    let urls: Vec<String> = c.nodes.iter().map(|g| g.ws_url()).collect();
    let (mut watcher, _) = RawClient::ready(&c.nodes[1].ws_url(), Codec::Json).await;
    watcher.request(join_watching(1, "crash")).await;
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(recording_client(urls.clone(), "crash").await);
    }
    // A connection that will die with the node and never come back.
    let (mut ghost, ghost_welcome) = RawClient::ready(&urls[0], Codec::Json).await;
    ghost.request(join(1, "crash")).await;
    let (ghost_session, _) = session(&ghost_welcome);
    // The presence service announces a join once the owning node has
    // reported it; a node killed before that leaves nothing to purge, so the
    // kill waits for the ghost's join to be known (on a slow machine the
    // report can take longer than the publisher's head start).
    let ghost_id = ghost_session.clone();
    watcher
        .recv_until(|f| match f {
            ServerFrame::PresenceJoin { member, .. } if member.session == ghost_id => Some(()),
            _ => None,
        })
        .await;

    let publisher = tokio::spawn(publish_steadily(c.nodes[1].addr, "crash", 300));
    tokio::time::sleep(Duration::from_millis(800)).await;
    c.nodes[0].process.signal("KILL");
    let killed_at = Instant::now();
    ghost.abort();
    // The ghost leaves presence once the dead node's lease (3 s) runs out;
    // the watcher reads while the publisher runs, so the time measured is
    // the leave's, not the publisher's.
    let leave_watch = tokio::spawn(async move {
        watcher
            .recv_until(|f| match f {
                ServerFrame::PresenceLeave { member, .. } if member.session == ghost_session => {
                    Some(())
                }
                _ => None,
            })
            .await;
        killed_at.elapsed()
    });
    publisher.await.unwrap();

    // The clients stay connected (alive) until the end of the test.
    let mut alive = Vec::new();
    for (i, (client, recorder, _)) in clients.into_iter().enumerate() {
        let offsets = recorder.await.unwrap();
        assert_exactly_once(&offsets, 301, &format!("client {i}"));
        alive.push(client);
    }
    let leave_after = leave_watch
        .await
        .expect("the ghost's leave reached the watcher");
    assert!(
        leave_after < Duration::from_secs(10),
        "leave took {leave_after:?}"
    );
    c.nodes.remove(0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_s_clients_resume_elsewhere_without_loss_and_without_presence_flap() {
    let mut c = cluster(3);
    let urls: Vec<String> = c.nodes.iter().map(|g| g.ws_url()).collect();
    let (mut watcher, _) = RawClient::ready(&c.nodes[2].ws_url(), Codec::Json).await;
    watcher.request(join_watching(1, "drain")).await;
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(recording_client(urls.clone(), "drain").await);
    }
    let drained: HashSet<String> = clients.iter().map(|(_, _, s)| s.clone()).collect();
    // Let the joins' presence events pass before the drain.
    tokio::time::sleep(Duration::from_millis(500)).await;
    while watcher
        .next_event_within(Duration::from_millis(200))
        .await
        .is_some()
    {}

    let publisher = tokio::spawn(publish_steadily(c.nodes[1].addr, "drain", 300));
    tokio::time::sleep(Duration::from_millis(800)).await;
    c.nodes[0].process.signal("TERM");
    publisher.await.unwrap();
    assert!(
        c.nodes[0]
            .process
            .wait_exit(Duration::from_secs(10))
            .is_some(),
        "drained node did not exit"
    );

    // The clients stay connected (alive) until the end of the test.
    let mut alive = Vec::new();
    for (i, (client, recorder, _)) in clients.into_iter().enumerate() {
        let offsets = recorder.await.unwrap();
        assert_exactly_once(&offsets, 301, &format!("client {i}"));
        alive.push(client);
    }
    // No leave (and no re-join) for the handed-over sessions.
    while let Some(event) = watcher.next_event_within(Duration::from_millis(1500)).await {
        if let roomcast_testkit::ws::Event::Frame(
            frame @ (ServerFrame::PresenceLeave { .. } | ServerFrame::PresenceJoin { .. }),
        ) = &event
        {
            let (ServerFrame::PresenceLeave { member, .. }
            | ServerFrame::PresenceJoin { member, .. }) = frame
            else {
                continue;
            };
            assert!(
                !drained.contains(&member.session),
                "presence flapped: {frame:?}"
            );
        }
    }
    let present = presence_sessions(&c.nodes[1], "drain");
    assert!(
        drained.is_subset(&present),
        "handed-over sessions missing from presence"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_goes_on_while_the_presence_service_restarts_and_presence_comes_back() {
    let mut c = cluster(2);
    let (mut member, welcome) = RawClient::ready(&c.nodes[1].ws_url(), Codec::Json).await;
    member.request(join(1, "up")).await;
    let (member_session, _) = session(&welcome);
    assert!(wait_until(Duration::from_secs(5), || presence_sessions(
        &c.nodes[0],
        "up"
    )
    .contains(&member_session)));

    let addr = c.presence.addr;
    c.presence.process.signal("KILL");
    for (i, next) in (0..20).zip(1u64..) {
        let body = format!(r#"{{"room":"up","data":{i}}}"#);
        let (status, _) =
            http_request(c.nodes[0].addr, "POST", "/api/publish", &[KEY], &body).unwrap();
        assert_eq!(status, 200);
        let offset = member
            .recv_until(|f| match f {
                ServerFrame::Message { offset, .. } => Some(*offset),
                _ => None,
            })
            .await;
        assert_eq!(offset, next);
    }
    let restarted_at = Instant::now();
    c.presence = PresenceService::start(&c.redis.url(), &[("ROOMCAST_LISTEN", &addr.to_string())]);
    assert!(
        wait_until(Duration::from_secs(10), || presence_sessions(
            &c.nodes[0],
            "up"
        )
        .contains(&member_session)),
        "presence not rebuilt within 10 s"
    );
    assert!(restarted_at.elapsed() < Duration::from_secs(10));
}

/// A client whose old connection still lingers (a flapping network: the
/// old socket is not closed yet) resumes on the same node. The old
/// connection is closed by the takeover and its teardown must not end the
/// session the new connection now holds: the presence service keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_resumed_over_its_lingering_connection_stays_present() {
    let c = cluster(2);
    let url = c.nodes[0].ws_url();
    let mut resumed_sessions = HashSet::new();
    let mut clients = Vec::new();
    for _ in 0..5 {
        let (new, session) = resume_over_a_lingering_connection(&url, "linger").await;
        resumed_sessions.insert(session);
        clients.push(new);
    }
    // Both nodes' ops reach the service within a flush or two.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for gw in &c.nodes {
        let present = presence_sessions(gw, "linger");
        assert_eq!(
            present, resumed_sessions,
            "presence on {} lost resumed sessions",
            gw.addr
        );
    }
    drop(clients);
}

/// Clients that close and at once resume, over and over, on a node whose
/// parked sessions live in the presence service's store: every resume
/// resumes, none leaves a parked copy of a session that is live again (a
/// resume that lands while the old connection's park is under way waits
/// for it and takes the copy; before, it took the live session over and
/// the park landed after it), and once the API has disconnected them none
/// of them can be resumed, not even at once, nor one already parked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_that_close_and_resume_at_once_leave_no_parked_copy_and_stay_disconnectable() {
    let c = cluster(1);
    let url = c.nodes[0].ws_url();
    let (mut keeper, _) = RawClient::ready(&url, Codec::Json).await;
    keeper.request(join(1, "storm")).await;
    let tasks: Vec<_> = (0..30)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { close_and_resume_at_once(&url, "storm", 15).await })
        })
        .collect();
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.unwrap());
    }
    assert_eq!(
        clients.iter().map(|r| r.fresh).sum::<usize>(),
        0,
        "resumes that started a fresh session"
    );
    // The last parks of the old connections have landed by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let parked: Vec<&str> = clients
        .iter()
        .map(|r| r.session.as_str())
        .filter(|s| c.redis.cmd(&["EXISTS", &format!("rc:{{sess:{s}}}")]) != "0")
        .collect();
    assert!(parked.is_empty(), "live sessions also parked: {parked:?}");

    for r in &mut clients {
        let body = format!(r#"{{"session":"{}"}}"#, r.session);
        let (status, answer) =
            http_request(c.nodes[0].addr, "POST", "/api/disconnect", &[KEY], &body).unwrap();
        assert_eq!((status, answer.as_str()), (200, r#"{"disconnected":1}"#));
        assert_eq!(r.client.expect_close().await, 1000);
    }
    // At once: the presence service may still list these sessions (its
    // ops from the node arrive in batches), and a session it lists would
    // resume on the token's word, as after a crash, were it not marked
    // ended in the store.
    for r in &clients {
        let mut back = RawClient::connect(&url, Codec::Json).await;
        back.send(&resume_hello(&r.session, &r.token, "storm", 0, "0"))
            .await;
        match back.recv().await {
            ServerFrame::Welcome { resumed, .. } => {
                assert!(!resumed, "{} resumed after its disconnect", r.session)
            }
            other => panic!("{other:?}"),
        }
    }

    // A session whose client is gone waits parked in the service's store;
    // a disconnect ends it there too.
    let mut gone = close_and_resume_at_once(&url, "storm", 0).await;
    gone.client
        .send_frame(yawc::Frame::close(yawc::close::CloseCode::Normal, b""))
        .await
        .unwrap();
    let key = format!("rc:{{sess:{}}}", gone.session);
    assert!(
        wait_until(Duration::from_secs(10), || c.redis.cmd(&["EXISTS", &key])
            == "1"),
        "the closed session was not parked"
    );
    let body = format!(r#"{{"session":"{}"}}"#, gone.session);
    let (status, _) =
        http_request(c.nodes[0].addr, "POST", "/api/disconnect", &[KEY], &body).unwrap();
    assert_eq!(status, 200);
    let mut back = RawClient::connect(&url, Codec::Json).await;
    back.send(&resume_hello(&gone.session, &gone.token, "storm", 0, "0"))
        .await;
    match back.recv().await {
        ServerFrame::Welcome { resumed, .. } => assert!(!resumed, "resumed after its disconnect"),
        other => panic!("{other:?}"),
    }
    drop(keeper);
}

/// A client back on another node before the first one saw its old socket
/// die: the session resumes there on the token's word (the presence
/// service lists it on the first node), and the first node is told. It
/// closes the lingering connection with 1000 without parking the session
/// or telling the presence service anything, so the session stays present
/// on the new node and nothing is left parked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_resumed_on_another_node_closes_its_lingering_connection() {
    let c = cluster(2);
    let mut first = joined(&c.nodes[0].ws_url(), "moved").await;
    let session = first.session.clone();
    assert!(wait_until(Duration::from_secs(5), || presence_sessions(
        &c.nodes[1],
        "moved"
    )
    .contains(&session)));
    let (new, resumed) = first.resume_on(&c.nodes[1].ws_url(), "moved").await;
    assert!(resumed, "not resumed");
    let code = tokio::time::timeout(Duration::from_secs(5), first.client.expect_close())
        .await
        .expect("the old node left its connection of the session open");
    assert_eq!(code, 1000);
    // The old node's teardown has run by now.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let key = format!("rc:{{sess:{session}}}");
    assert_eq!(
        c.redis.cmd(&["EXISTS", &key]),
        "0",
        "parked by the old node"
    );
    for gw in &c.nodes {
        assert!(
            presence_sessions(gw, "moved").contains(&session),
            "dropped from presence on {}",
            gw.addr
        );
    }
    drop(new);
}

/// A session resumed on the token's word is claimed for its new node: a
/// park of it by the node that listed it, landing after the resume (a
/// drain parks before it unlists, and the moved notice finds nothing left
/// to stop), is refused with 409 `superseded`, and no copy is parked. So a
/// later resume on a third node, while the session is live on the second,
/// goes through the listing and tells the second node it moved, instead
/// of taking a stale copy and leaving the session live on two nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_nodes_park_after_a_resume_on_the_tokens_word_is_refused() {
    let c = cluster(3);
    let first = joined(&c.nodes[0].ws_url(), "late").await;
    let session = first.session.clone();
    assert!(wait_until(Duration::from_secs(5), || presence_sessions(
        &c.nodes[1],
        "late"
    )
    .contains(&session)));
    let lookups = || c.presence.metric("roomcast_presence_lookup_requests_total");
    let before = lookups();
    let (mut second, resumed) = first.resume_on(&c.nodes[1].ws_url(), "late").await;
    assert!(resumed, "not resumed on the second node");
    assert_eq!(
        lookups(),
        before,
        "the resume asked the listing apart from its take"
    );

    // node-0's park of the session, as its teardown sends it, late.
    let park = json!({
        "record": {"user": "late-park", "anonymous": true},
        "ttl_ms": 60_000,
        "node": "node-0",
    });
    let (status, body) = http_request(
        c.presence.addr,
        "PUT",
        &format!("/v1/sessions/{session}"),
        &[("Content-Type", "application/json")],
        &park.to_string(),
    )
    .unwrap();
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("superseded"), "{body}");
    let key = format!("rc:{{sess:{session}}}");
    assert_eq!(c.redis.cmd(&["EXISTS", &key]), "0", "a copy was parked");

    // A resume on the third node while the session is live on the second,
    // once the presence service lists it there.
    assert!(
        wait_until(Duration::from_secs(5), || listed_on(&c, &session)
            == ["node-1"]),
        "listed on {:?}",
        listed_on(&c, &session)
    );
    let (third, resumed) = first.resume_on(&c.nodes[2].ws_url(), "late").await;
    assert!(resumed, "not resumed on the third node");
    let code = tokio::time::timeout(Duration::from_secs(5), second.expect_close())
        .await
        .expect("the second node was not told the session moved");
    assert_eq!(code, 1000);
    assert!(
        c.presence
            .metric("roomcast_presence_session_parks_superseded_total")
            >= 1,
        "refused park not counted"
    );
    drop((first, third));
}

/// The nodes the presence service lists a session on.
fn listed_on(c: &Cluster, session: &str) -> Vec<String> {
    let (_, body) = http_request(
        c.presence.addr,
        "POST",
        "/v1/lookup",
        &[("Content-Type", "application/json")],
        &json!({"sessions": [session]}).to_string(),
    )
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mut nodes: Vec<String> = v["sessions"]
        .as_array()
        .map(|owners| {
            owners
                .iter()
                .filter_map(|o| o["node"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    nodes.sort();
    nodes
}

/// A cluster whose nodes hold 30 s leases: a killed node stays listed by
/// the presence service for as long as a test needs.
fn long_lease_cluster(nodes: usize) -> Cluster {
    let redis = RedisServer::start();
    let presence = PresenceService::start(&redis.url(), &[]);
    let nodes = (0..nodes)
        .map(|i| {
            Gateway::start(&[
                ("ROOMCAST_REDIS__URL", redis.url().as_str()),
                ("ROOMCAST_PRESENCE__URL", presence.url().as_str()),
                ("ROOMCAST_PRESENCE__LEASE_MS", "30000"),
                ("ROOMCAST_NODE__ID", &format!("node-{i}")),
                ("ROOMCAST_AUTH__RESUME_SECRET", "presence-test-secret"),
            ])
        })
        .collect();
    Cluster {
        redis,
        presence,
        nodes,
    }
}

/// Two resumes on the token's word, on two nodes, so close together that
/// the presence service does not list the session on the first of them
/// yet when the second asks: the second node's claim replaces the first
/// node's, the service names the first node as displaced, and the second
/// node tells it the session moved, so the session is not left live on
/// both. node-1 is stopped (SIGSTOP) right after its resume, which holds
/// its report to the service back for as long as the test needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_resume_on_the_tokens_word_closes_the_first_before_it_is_listed() {
    // A long lease: the killed node-0 stays listed for the whole test.
    let c = long_lease_cluster(3);
    // Several sessions on node-0: one is enough, unless node-1's report
    // happens to beat the SIGSTOP.
    let mut sessions = Vec::new();
    for _ in 0..5 {
        sessions.push(joined(&c.nodes[0].ws_url(), "twice").await);
    }
    for s in &sessions {
        assert!(
            wait_until(Duration::from_secs(5), || listed_on(&c, &s.session)
                == ["node-0"]),
            "{} not listed on node-0",
            s.session
        );
    }
    c.nodes[0].process.signal("KILL");

    let mut exercised = false;
    for s in &sessions {
        let (mut on_1, resumed) = s.resume_on(&c.nodes[1].ws_url(), "twice").await;
        c.nodes[1].process.signal("STOP");
        assert!(resumed, "not resumed on node-1");
        if listed_on(&c, &s.session) != ["node-0"] {
            // node-1 reported it before it stopped: nothing to show here.
            c.nodes[1].process.signal("CONT");
            continue;
        }
        let (on_2, resumed) = s.resume_on(&c.nodes[2].ws_url(), "twice").await;
        assert!(resumed, "not resumed on node-2");
        c.nodes[1].process.signal("CONT");
        let code = tokio::time::timeout(Duration::from_secs(5), on_1.expect_close())
            .await
            .expect("node-1 was not told the session moved to node-2");
        assert_eq!(code, 1000);
        assert!(
            wait_until(Duration::from_secs(5), || listed_on(&c, &s.session)
                .contains(&"node-2".to_string())
                && !listed_on(&c, &s.session).contains(&"node-1".to_string())),
            "listed on {:?}",
            listed_on(&c, &s.session)
        );
        drop(on_2);
        exercised = true;
        break;
    }
    assert!(
        exercised,
        "node-1 reported every resume before it was stopped"
    );
    assert!(
        c.presence
            .metric("roomcast_presence_session_claims_displaced_total")
            >= 1
    );
}

/// The mark of a session the API ended refuses every resume of it, not the
/// first one only: while its crashed node is still listed, a second resume
/// with the old token would otherwise find nothing parked and resume on
/// the token's word.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_session_is_refused_on_every_resume_while_its_dead_node_is_listed() {
    let c = long_lease_cluster(2);
    let ended = joined(&c.nodes[0].ws_url(), "kick").await;
    assert!(wait_until(Duration::from_secs(5), || listed_on(
        &c,
        &ended.session
    ) == ["node-0"]));
    c.nodes[0].process.signal("KILL");
    let body = json!({"session": ended.session}).to_string();
    let (status, _) =
        http_request(c.nodes[1].addr, "POST", "/api/disconnect", &[KEY], &body).unwrap();
    assert_eq!(status, 200);
    let key = format!("rc:{{sess:{}}}", ended.session);
    let url = c.nodes[1].ws_url();
    for attempt in 0..3 {
        assert!(
            !ended.resumes(&url, "kick").await,
            "resume {attempt} of an ended session went through"
        );
        assert_eq!(c.redis.cmd(&["GET", &key]), r#"{"ended":true}"#);
    }
    assert_eq!(listed_on(&c, &ended.session), ["node-0"]);
}

/// A `{user}` disconnect reaches the sessions the user left parked in the
/// presence service's store, whichever node parked them and whichever node
/// the call lands on: each one's copy becomes the mark of an ended session
/// (its resume starts fresh), and other users' copies stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_disconnect_ends_the_sessions_the_user_left_parked() {
    let c = cluster(2);
    let (url0, url1) = (c.nodes[0].ws_url(), c.nodes[1].ws_url());
    let mut gone = joined(&url0, "ban").await;
    let mut other = joined(&url0, "ban").await;
    gone.close().await;
    other.close().await;
    for j in [&gone, &other] {
        let key = format!("rc:{{sess:{}}}", j.session);
        assert!(
            wait_until(Duration::from_secs(10), || c.redis.cmd(&["EXISTS", &key])
                == "1"),
            "{} was not parked",
            j.session
        );
    }
    let listed = format!("rc:{{user:{}}}", gone.user);
    assert_eq!(c.redis.cmd(&["SISMEMBER", &listed, &gone.session]), "1");

    let body = format!(r#"{{"user":"{}"}}"#, gone.user);
    let (status, _) =
        http_request(c.nodes[1].addr, "POST", "/api/disconnect", &[KEY], &body).unwrap();
    assert_eq!(status, 200);
    let key = format!("rc:{{sess:{}}}", gone.session);
    assert_eq!(c.redis.cmd(&["GET", &key]), r#"{"ended":true}"#);
    assert_eq!(c.redis.cmd(&["EXISTS", &listed]), "0");
    assert!(
        !gone.resumes(&url1, "ban").await,
        "resumed after its user's disconnect"
    );
    assert!(
        other.resumes(&url1, "ban").await,
        "another user's parked session"
    );
}

/// A resume whose take the presence service carried out, but whose answer
/// was lost on its way back to the node, still resumes: the node asks
/// once more with the same token and gets the same answer. (Before, the
/// record was gone with the lost answer and the client started fresh.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_whose_take_answer_was_lost_still_resumes() {
    let redis = RedisServer::start();
    let presence = PresenceService::start(&redis.url(), &[]);
    let proxy = TcpProxy::start(presence.addr).await;
    let a = gateway(&redis.url(), &presence.url(), "node-0");
    let b = gateway(&redis.url(), &format!("http://{}", proxy.addr), "node-1");
    let mut first = joined(&a.ws_url(), "lost").await;
    first.close().await;
    let key = format!("rc:{{sess:{}}}", first.session);
    assert!(
        wait_until(Duration::from_secs(5), || redis.cmd(&["EXISTS", &key])
            == "1"),
        "the session was not parked"
    );
    // Both nodes made their first full sync (node-1's through the proxy).
    assert!(wait_until(Duration::from_secs(10), || presence
        .metric("roomcast_presence_full_syncs_total")
        >= 2));

    let repeated = || presence.metric("roomcast_presence_session_takes_repeated_total");
    proxy.hold_replies();
    let url = b.ws_url();
    let resume = tokio::spawn(async move { first.resume_on(&url, "lost").await.1 });
    // The first take reached the service, which took the record; its
    // answer waits in the proxy, and is dropped by node-1 after 1 s. The
    // retry reaches the service too, and is answered from the kept answer.
    assert!(
        wait_until(Duration::from_secs(5), || repeated() == 1),
        "no retry of the take reached the service"
    );
    assert_eq!(redis.cmd(&["EXISTS", &key]), "0", "the record was taken");
    proxy.heal();
    let resumed = tokio::time::timeout(Duration::from_secs(10), resume)
        .await
        .expect("no welcome")
        .unwrap();
    assert!(resumed, "the session started fresh");
    assert_eq!(
        metric(&b, "roomcast_resumes_total{outcome=\"resumed\"}"),
        1,
        "not counted as a resume"
    );
}

//! Resume on Redis alone (#29): with the presence service down, a node's
//! clients resume on the other nodes (`resumed: true`, nothing lost, nothing
//! twice), whether the node crashed (nothing parked: a resume on the token's
//! word, the session claimed in Redis by the new node) or drained (parked
//! in Redis by the node itself, taken by the new one); and once the
//! service is back, every node lists each resumed session once, with no
//! leave for any of them.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use roomcast_client::{Backoff, Client, ConnectionState, Event};
use roomcast_protocol::{Codec, ServerFrame};
use roomcast_testkit::redis::RedisServer;
use roomcast_testkit::ws::{join_watching, joined, RawClient};
use roomcast_testkit::{http_request, wait_until, Gateway, PresenceService};
use serde_json::json;

const KEY: (&str, &str) = ("Authorization", "Bearer test-key");
const LEASE: Duration = Duration::from_millis(3000);
const CLIENTS: usize = 8;
const MESSAGES: usize = 300;

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

/// The members of `room` as `gw`'s API lists them: session → how many
/// times listed, and the status (503 while the service is down).
fn presence_members(gw: &Gateway, room: &str) -> (u16, BTreeMap<String, usize>) {
    let path = format!("/api/presence/{room}");
    let Ok((status, body)) = http_request(gw.addr, "GET", &path, &[KEY], "") else {
        return (0, BTreeMap::new());
    };
    let mut members = BTreeMap::new();
    if status == 200 {
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        for m in v["members"].as_array().unwrap() {
            *members
                .entry(m["session"].as_str().unwrap().to_string())
                .or_insert(0) += 1;
        }
    }
    (status, members)
}

/// A client-library client that records every room message (its data) and
/// every `welcome` (whether it resumed).
struct Recorded {
    client: Client,
    session: String,
    run: tokio::task::JoinHandle<(Vec<u64>, Vec<bool>)>,
}

async fn recording_client(urls: Vec<String>, room: &'static str) -> Recorded {
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
    let run = tokio::spawn(async move {
        let (mut numbers, mut welcomes) = (Vec::new(), Vec::new());
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_secs(5), events.recv()).await {
                Ok(Some(Event::Message(m))) => {
                    if m.data == json!("end") {
                        break;
                    }
                    numbers.push(m.data.as_u64().expect("a numbered message"));
                }
                Ok(Some(Event::State(ConnectionState::Connected { resumed, .. }))) => {
                    welcomes.push(resumed);
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        (numbers, welcomes)
    });
    Recorded {
        client,
        session,
        run,
    }
}

/// Publishes 0..n over the API of `gw`, then an "end" marker.
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

/// The node 0 of three goes (`signal`: KILL for a crash, TERM for a drain)
/// while the presence service is down; returns what was measured.
async fn node_goes_while_presence_is_down(signal: &str, room: &'static str) {
    let began = Instant::now();
    let step = |what: &str| eprintln!("{signal}: {what} at {:?}", began.elapsed());
    let redis = RedisServer::start();
    let mut presence = PresenceService::start(&redis.url(), &[]);
    step("presence up");
    let mut nodes: Vec<Gateway> = (0..3)
        .map(|i| gateway(&redis.url(), &presence.url(), &format!("node-{i}")))
        .collect();
    // Node 0 first: every client starts there, and moves on to 1 or 2.
    let urls: Vec<String> = nodes.iter().map(|g| g.ws_url()).collect();
    let (mut watcher, welcome) = RawClient::ready(&urls[1], Codec::Json).await;
    let ServerFrame::Welcome {
        session: watcher_session,
        ..
    } = welcome
    else {
        panic!("{welcome:?}")
    };
    watcher.request(join_watching(1, room)).await;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(recording_client(urls.clone(), room).await);
    }
    step("clients connected");
    let moved: HashSet<String> = clients.iter().map(|c| c.session.clone()).collect();
    assert_eq!(moved.len(), CLIENTS);
    // The service has heard of every client before it goes.
    let mut joined = HashSet::new();
    while joined != moved {
        let session = watcher
            .recv_until(|f| match f {
                ServerFrame::PresenceJoin { member, .. } => Some(member.session.clone()),
                _ => None,
            })
            .await;
        joined.insert(session);
    }
    let on_node_0 = presence_members(&nodes[1], room).1;
    assert!(moved.iter().all(|s| on_node_0.get(s) == Some(&1)));

    step("joins seen");
    let presence_addr = presence.addr;
    presence.process.signal("KILL");
    presence.process.wait_exit(Duration::from_secs(5));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        presence_members(&nodes[1], room).0,
        503,
        "presence queries answer 503 while the service is down"
    );

    let publisher = tokio::spawn(publish_steadily(nodes[1].addr, room, MESSAGES));
    tokio::time::sleep(Duration::from_millis(800)).await;
    let gone_at = Instant::now();
    nodes[0].process.signal(signal);
    if signal == "TERM" {
        assert!(
            nodes[0]
                .process
                .wait_exit(Duration::from_secs(15))
                .is_some(),
            "drained node did not exit"
        );
    }
    publisher.await.unwrap();
    step("published");

    let mut alive = Vec::new();
    for (i, c) in clients.into_iter().enumerate() {
        let (numbers, welcomes) = c.run.await.unwrap();
        let expected: Vec<u64> = (0..MESSAGES as u64).collect();
        assert_eq!(numbers, expected, "client {i}: lost or duplicated messages");
        assert!(
            welcomes.len() >= 2 && welcomes[1..].iter().all(|r| *r),
            "client {i}: every welcome after the first resumed: {welcomes:?}"
        );
        alive.push(c.client);
    }
    let resumed: u64 = nodes[1..]
        .iter()
        .map(|n| n.metric("roomcast_resumes_total{outcome=\"resumed\"}"))
        .sum();
    let refused: u64 = nodes[1..]
        .iter()
        .map(|n| n.metric("roomcast_resumes_total{outcome=\"refused\"}"))
        .sum();
    eprintln!(
        "{signal}: {CLIENTS} clients x {MESSAGES} messages exactly once; resumes on nodes 1-2: \
         {resumed} resumed, {refused} refused; moved within {:?}",
        gone_at.elapsed()
    );
    assert!(resumed >= CLIENTS as u64, "resumed {resumed}");
    assert_eq!(refused, 0);

    step("recorded");
    // The service comes back on its port: the nodes' full syncs rebuild
    // its lists, each resumed session once, on the node that holds it.
    let restarted_at = Instant::now();
    let _presence = PresenceService::start(
        &redis.url(),
        &[("ROOMCAST_LISTEN", &presence_addr.to_string())],
    );
    let mut want: BTreeMap<String, usize> = moved.iter().map(|s| (s.clone(), 1)).collect();
    want.insert(watcher_session.clone(), 1);
    for gw in &nodes[1..] {
        assert!(
            wait_until(LEASE + Duration::from_secs(10), || presence_members(
                gw, room
            )
            .1 == want),
            "presence on {} is {:?}, want {want:?}",
            gw.addr,
            presence_members(gw, room)
        );
    }
    let listed_after = restarted_at.elapsed();
    // A while longer: the lists stay right past the dead node's lease.
    tokio::time::sleep(LEASE + Duration::from_secs(1)).await;
    for gw in &nodes[1..] {
        assert_eq!(presence_members(gw, room).1, want, "on {}", gw.addr);
    }
    // No leave for a resumed session, from the move to now.
    let (mut leaves, mut joins) = (0, 0);
    while let Some(event) = watcher.next_event_within(Duration::from_millis(500)).await {
        if let roomcast_testkit::ws::Event::Frame(frame) = event {
            match frame {
                ServerFrame::PresenceLeave { member, .. } if moved.contains(&member.session) => {
                    leaves += 1;
                }
                ServerFrame::PresenceJoin { member, .. } if moved.contains(&member.session) => {
                    joins += 1;
                }
                _ => {}
            }
        }
    }
    eprintln!(
        "{signal}: presence listed each of {} sessions once on both nodes {listed_after:?} \
         after its restart; watcher saw {leaves} leaves, {joins} joins of moved sessions",
        want.len()
    );
    assert_eq!(leaves, 0, "a resumed session left presence");
    drop(alive);
    nodes.remove(0);
    step("done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_node_s_clients_resume_with_presence_down() {
    node_goes_while_presence_is_down("KILL", "nopres-crash").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_s_clients_resume_with_presence_down() {
    node_goes_while_presence_is_down("TERM", "nopres-drain").await;
}

/// The parked-session store is one, whoever runs it: a session parked
/// through the service is taken by a gateway on its own while the service
/// is down (and claimed for it), one parked by a gateway on its own is
/// taken through the service once it is back, and the mark of a session
/// the API ended while the service was down refuses its resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_parked_by_either_side_are_taken_by_the_other() {
    let redis = RedisServer::start();
    let presence = PresenceService::start(&redis.url(), &[]);
    let nodes: Vec<Gateway> = (0..2)
        .map(|i| gateway(&redis.url(), &presence.url(), &format!("node-{i}")))
        .collect();
    let (url0, url1) = (nodes[0].ws_url(), nodes[1].ws_url());
    let key = |session: &str| format!("rc:{{sess:{session}}}");

    // Parked through the service, taken by node-1 alone.
    let mut a = joined(&url0, "either").await;
    a.close().await;
    assert!(
        wait_until(Duration::from_secs(5), || redis
            .cmd(&["EXISTS", &key(&a.session)])
            == "1"),
        "not parked"
    );
    assert_eq!(
        presence.metric("roomcast_presence_sessions_parked_total"),
        1,
        "not parked through the service"
    );
    let presence_addr = presence.addr;
    let mut presence = presence;
    presence.process.signal("KILL");
    presence.process.wait_exit(Duration::from_secs(5));
    let (a_back, resumed) = a.resume_on(&url1, "either").await;
    assert!(
        resumed,
        "a session parked through the service did not resume"
    );
    assert_eq!(redis.cmd(&["EXISTS", &key(&a.session)]), "0");
    assert_eq!(
        redis.cmd(&["GET", &format!("{}:held", key(&a.session))]),
        "node-1",
        "the take did not claim the session"
    );

    // Parked by node-0 alone.
    let mut b = joined(&url0, "either").await;
    b.close().await;
    assert!(
        wait_until(Duration::from_secs(5), || redis
            .cmd(&["EXISTS", &key(&b.session)])
            == "1"),
        "node-0 did not park the session in redis"
    );
    let user_key = format!("rc:{{user:{}}}", b.user);
    assert_eq!(redis.cmd(&["SISMEMBER", &user_key, &b.session]), "1");

    // Ended through the API while the service is down.
    let c = joined(&url0, "either").await;
    let body = json!({"session": c.session}).to_string();
    let (status, _) =
        http_request(nodes[0].addr, "POST", "/api/disconnect", &[KEY], &body).unwrap();
    assert_eq!(status, 200);
    assert!(
        wait_until(Duration::from_secs(5), || redis
            .cmd(&["GET", &key(&c.session)])
            == r#"{"ended":true}"#),
        "the ended session was not marked"
    );
    for _ in 0..2 {
        assert!(
            !c.resumes(&url1, "either").await,
            "an ended session resumed"
        );
    }

    // The service back: node-0's record is taken through it.
    let presence = PresenceService::start(
        &redis.url(),
        &[("ROOMCAST_LISTEN", &presence_addr.to_string())],
    );
    assert!(
        wait_until(Duration::from_secs(10), || presence_members(
            &nodes[1], "either"
        )
        .1
        .contains_key(&a.session)),
        "the service did not come back"
    );
    let taken = || presence.metric("roomcast_presence_sessions_taken_total");
    let before = taken();
    let (b_back, resumed) = b.resume_on(&url1, "either").await;
    assert!(resumed, "a session parked by a gateway did not resume");
    assert_eq!(taken(), before + 1, "not taken through the service");
    assert_eq!(redis.cmd(&["EXISTS", &key(&b.session)]), "0");
    drop((a_back, b_back, c));
}

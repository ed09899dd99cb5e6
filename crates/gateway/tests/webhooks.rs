//! Webhooks in a cluster: Redis, the presence service (the one sender),
//! three gateways and the example backend (`examples/backend/backend.py`),
//! all real processes. The backend must get every presence change exactly
//! once, in order per room, in signed batches, also after it refused some.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use roomcast_protocol::{ClientFrame, Codec, Resume, ResumeRoom, ServerFrame};
use roomcast_testkit::redis::RedisServer;
use roomcast_testkit::ws::{join, Event, RawClient};
use roomcast_testkit::{http_request, Gateway, HookBackend, PresenceService};
use serde_json::Value;

const SECRET: &str = "webhook-test-secret";
/// Lease of the gateways and handoff grace of a draining one.
const LEASE_MS: &str = "3000";
const GRACE_MS: &str = "3000";

struct Cluster {
    backend: HookBackend,
    presence: PresenceService,
    nodes: Vec<Gateway>,
    _redis: RedisServer,
}

/// The backend, Redis, the presence service sending webhooks to the
/// backend, and three gateways (node-0 … node-2).
/// Builds the binaries when stale (a no-op after the first call), so that
/// builds do not count against a test's time; then the clock starts.
fn built() -> Instant {
    roomcast_testkit::binary("roomcast-presence");
    roomcast_testkit::binary("roomcast-gateway");
    Instant::now()
}

fn cluster(failures_first: Option<u32>) -> Cluster {
    let backend = HookBackend::start(SECRET, 1.0);
    if let Some(count) = failures_first {
        backend.control(
            "/control/webhook-failures",
            &format!(r#"{{"count": {count}}}"#),
        );
    }
    let redis = RedisServer::start();
    let hook_url = backend.url("/webhook");
    let presence = PresenceService::start(
        &redis.url(),
        &[
            ("ROOMCAST_WEBHOOKS__URL", &hook_url),
            ("ROOMCAST_WEBHOOKS__SECRET", SECRET),
            ("ROOMCAST_WEBHOOKS__BATCH_DELAY_MS", "150"),
            ("ROOMCAST_WEBHOOKS__RETRY_INITIAL_MS", "100"),
            ("ROOMCAST_WEBHOOKS__RETRY_MAX_MS", "400"),
        ],
    );
    let nodes = (0..3)
        .map(|i| {
            Gateway::start(&[
                ("ROOMCAST_REDIS__URL", &redis.url()),
                ("ROOMCAST_PRESENCE__URL", &presence.url()),
                ("ROOMCAST_PRESENCE__LEASE_MS", LEASE_MS),
                ("ROOMCAST_PRESENCE__HANDOFF_GRACE_MS", GRACE_MS),
                ("ROOMCAST_NODE__ID", &format!("node-{i}")),
                ("ROOMCAST_AUTH__RESUME_SECRET", "webhooks-test-secret"),
                ("ROOMCAST_DRAIN__WINDOW_MS", "300"),
                ("ROOMCAST_DRAIN__TIMEOUT_MS", "5000"),
            ])
        })
        .collect();
    Cluster {
        backend,
        presence,
        nodes,
        _redis: redis,
    }
}

/// A connected client: its socket, session, user and the rooms it joined
/// (with the position a resume needs).
struct Member {
    ws: RawClient,
    session: String,
    user: String,
    rooms: Vec<ResumeRoom>,
    resume_token: String,
}

impl Member {
    async fn connect(gw: &Gateway) -> Member {
        let (ws, welcome) = RawClient::ready(&gw.ws_url(), Codec::Json).await;
        let ServerFrame::Welcome {
            session,
            user,
            resume_token,
            ..
        } = welcome
        else {
            panic!("{welcome:?}")
        };
        Member {
            ws,
            session,
            user,
            rooms: Vec::new(),
            resume_token,
        }
    }

    async fn join(&mut self, room: &str) {
        match self.ws.request(join(1, room)).await {
            ServerFrame::Joined { offset, epoch, .. } => self.rooms.push(ResumeRoom {
                room: room.into(),
                offset,
                epoch,
                presence: None,
            }),
            other => panic!("join {room}: {other:?}"),
        }
    }

    async fn leave(&mut self, room: &str) {
        let frame = self
            .ws
            .request(ClientFrame::Leave {
                id: Some(2),
                room: room.into(),
            })
            .await;
        assert!(matches!(frame, ServerFrame::Left { .. }), "{frame:?}");
        self.rooms.retain(|r| r.room != room);
    }

    /// Waits for the drain's `reconnect` and close 1012; returns the
    /// `after_ms` the node asked for.
    async fn drained(&mut self) -> u64 {
        let mut after_ms = None;
        loop {
            match self.ws.next_event_within(Duration::from_secs(10)).await {
                Some(Event::Frame(ServerFrame::Reconnect { after_ms: a, .. })) => {
                    after_ms = Some(a)
                }
                Some(Event::Frame(_)) => {}
                Some(Event::Closed(code)) => {
                    assert_eq!(code, 1012, "drain closes with 1012");
                    return after_ms.expect("reconnect before the close");
                }
                None => panic!("not drained within 10 s"),
            }
        }
    }

    /// Resumes this session, with its rooms, on `gw`.
    async fn resume_on(&mut self, gw: &Gateway) {
        let mut ws = RawClient::connect(&gw.ws_url(), Codec::Json).await;
        ws.send(&ClientFrame::Hello {
            id: Some(0),
            token: None,
            resume: Some(Resume {
                session: self.session.clone(),
                token: self.resume_token.clone(),
                rooms: self.rooms.clone(),
            }),
        })
        .await;
        match ws.recv().await {
            ServerFrame::Welcome {
                session,
                resumed,
                rooms,
                resume_token,
                ..
            } => {
                assert!(resumed, "the session was not resumed");
                assert_eq!(session, self.session);
                assert_eq!(rooms.len(), self.rooms.len(), "rooms restored");
                self.resume_token = resume_token;
            }
            other => panic!("{other:?}"),
        }
        self.ws = ws;
    }
}

/// An event as the test compares them: type, room, session, user, reason.
type Key = (String, String, String, String, String);

fn key(kind: &str, room: &str, member: Option<&Member>, reason: &str) -> Key {
    (
        kind.into(),
        room.into(),
        member.map(|m| m.session.clone()).unwrap_or_default(),
        member.map(|m| m.user.clone()).unwrap_or_default(),
        reason.into(),
    )
}

fn key_of(event: &Value) -> Key {
    let field = |name: &str| event[name].as_str().unwrap_or_default().to_string();
    (
        field("type"),
        field("room"),
        field("session"),
        field("user"),
        field("reason"),
    )
}

/// What the test expects the backend to have received, step by step.
#[derive(Default)]
struct Expected(Vec<Key>);

impl Expected {
    fn occupied(&mut self, room: &str) {
        self.0.push(key("room_occupied", room, None, ""));
    }
    fn vacated(&mut self, room: &str) {
        self.0.push(key("room_vacated", room, None, ""));
    }
    fn joined(&mut self, room: &str, m: &Member) {
        self.0.push(key("presence_join", room, Some(m), ""));
    }
    fn left(&mut self, room: &str, m: &Member) {
        self.0.push(key("presence_leave", room, Some(m), ""));
    }
    fn ended(&mut self, m: &Member, reason: &str) {
        self.0.push(key("session_end", "", Some(m), reason));
    }
}

fn webhooks(backend: &HookBackend) -> Value {
    backend.get("/webhooks")
}

fn received(backend: &HookBackend) -> Vec<Value> {
    webhooks(backend)["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Waits (up to `timeout`) until the backend has at least `n` events.
async fn wait_for_events(backend: &HookBackend, n: usize, timeout: Duration, what: &str) {
    let deadline = Instant::now() + timeout;
    loop {
        let got = received(backend);
        if got.len() >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {} of {n} webhook events within {timeout:?}: {}",
            got.len(),
            serde_json::to_string_pretty(&got).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn multiset(keys: impl IntoIterator<Item = Key>) -> BTreeMap<Key, usize> {
    let mut out = BTreeMap::new();
    for k in keys {
        *out.entry(k).or_default() += 1;
    }
    out
}

/// Every expected event exactly once (and nothing else), unique ids, and,
/// replayed in arrival order, a consistent story per room and per session:
/// a room is occupied before its first join and vacated after its last
/// leave; a session joins a room it is not in, leaves one it is in, and
/// ends after its last leave, with nothing after.
fn check_events(events: &[Value], expected: &Expected) {
    let got = multiset(events.iter().map(key_of));
    let want = multiset(expected.0.iter().cloned());
    let missing: Vec<_> = want
        .iter()
        .filter(|(k, n)| got.get(*k) != Some(*n))
        .collect();
    let extra: Vec<_> = got
        .iter()
        .filter(|(k, n)| want.get(*k) != Some(*n))
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "webhook events differ\nexpected (count) but got otherwise: {missing:?}\nreceived (count) unexpectedly: {extra:?}"
    );
    assert_eq!(events.len(), expected.0.len());

    let ids: HashSet<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), events.len(), "duplicate event ids");

    let mut rooms: HashMap<&str, (bool, HashSet<&str>)> = HashMap::new();
    let mut ended: HashSet<&str> = HashSet::new();
    for (i, e) in events.iter().enumerate() {
        let room = e["room"].as_str().unwrap_or_default();
        let session = e["session"].as_str().unwrap_or_default();
        assert!(e["time_ms"].as_u64().is_some(), "event {i}: time_ms");
        assert!(
            !ended.contains(session),
            "event {i} after the session ended: {e}"
        );
        let (occupied, members) = rooms.entry(room).or_default();
        match e["type"].as_str().unwrap() {
            "room_occupied" => {
                assert!(!*occupied && members.is_empty(), "event {i}: {e}");
                *occupied = true;
            }
            "presence_join" => {
                assert!(*occupied, "event {i}: join before room_occupied: {e}");
                assert!(members.insert(session), "event {i}: joined twice: {e}");
            }
            "presence_leave" => {
                assert!(
                    members.remove(session),
                    "event {i}: leave of a non-member: {e}"
                );
            }
            "room_vacated" => {
                assert!(*occupied && members.is_empty(), "event {i}: {e}");
                *occupied = false;
            }
            "session_end" => {
                for (room, (_, members)) in &rooms {
                    assert!(
                        !members.contains(session),
                        "event {i}: session ended while still in {room}: {e}"
                    );
                }
                ended.insert(session);
            }
            other => panic!("unknown event type {other}"),
        }
    }
    // Every room left empty was vacated.
    for (room, (occupied, members)) in &rooms {
        if !room.is_empty() {
            assert_eq!(
                *occupied,
                !members.is_empty(),
                "{room}: occupied without members or the reverse"
            );
        }
    }
}

fn presence_metric(presence: &PresenceService, name: &str) -> u64 {
    let (_, text) = http_request(presence.addr, "GET", "/metrics", &[], "").unwrap();
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_presence_change_reaches_the_backend_once_in_order_batched_and_signed() {
    let started = built();
    let c = cluster(None);
    let backend = &c.backend;
    let mut want = Expected::default();
    let step = Duration::from_secs(5);

    // A room gets its first member on node-0...
    let mut a = Member::connect(&c.nodes[0]).await;
    a.join("lobby").await;
    want.occupied("lobby");
    want.joined("lobby", &a);
    wait_for_events(backend, want.0.len(), step, "first join").await;

    // ...and a member on another node joins the occupied room: no second
    // room_occupied. A room that is left again is vacated.
    let mut b = Member::connect(&c.nodes[1]).await;
    b.join("lobby").await;
    want.joined("lobby", &b);
    b.join("solo").await;
    want.occupied("solo");
    want.joined("solo", &b);
    wait_for_events(backend, want.0.len(), step, "second node").await;

    let mut cc = Member::connect(&c.nodes[2]).await;
    cc.join("lobby").await;
    want.joined("lobby", &cc);
    cc.join("game:1").await;
    want.occupied("game:1");
    want.joined("game:1", &cc);
    let mut d = Member::connect(&c.nodes[2]).await;
    d.join("d-room").await;
    want.occupied("d-room");
    want.joined("d-room", &d);
    let mut e = Member::connect(&c.nodes[1]).await;
    e.join("e-room").await;
    want.occupied("e-room");
    want.joined("e-room", &e);
    e.join("lobby").await;
    want.joined("lobby", &e);
    wait_for_events(backend, want.0.len(), step, "third node").await;

    a.join("game:1").await;
    want.joined("game:1", &a);
    b.leave("solo").await;
    want.left("solo", &b);
    want.vacated("solo");
    a.leave("lobby").await;
    want.left("lobby", &a);
    // A join of a room the session is in already: nothing.
    a.join("game:1").await;
    wait_for_events(backend, want.0.len(), step, "joins and leaves").await;

    // B's connection ends (no drain, no resume): it leaves, then ends.
    want.left("lobby", &b);
    want.ended(&b, "closed");
    drop(b);
    wait_for_events(backend, want.0.len(), step, "disconnect").await;

    // node-2 drains: C resumes on node-0 within the handoff grace (no event
    // at all), D does not come back (it ends as expired after the grace).
    // Meanwhile node-1 dies: E ends as node_lost after node-1's lease.
    c.nodes[2].process.signal("TERM");
    c.nodes[1].process.signal("KILL");
    let after_ms = cc.drained().await;
    d.drained().await;
    // Leave the draining node time to park the session, as a client
    // honouring `after_ms` would.
    tokio::time::sleep(Duration::from_millis(after_ms + 200)).await;
    cc.resume_on(&c.nodes[0]).await;
    want.left("d-room", &d);
    want.vacated("d-room");
    want.ended(&d, "expired");
    want.left("e-room", &e);
    want.vacated("e-room");
    want.left("lobby", &e);
    want.ended(&e, "node_lost");
    wait_for_events(
        backend,
        want.0.len(),
        Duration::from_secs(12),
        "grace and lease expiry",
    )
    .await;

    // The resumed session is the same one, in the same rooms, on node-0.
    cc.leave("game:1").await;
    want.left("game:1", &cc);
    want.left("game:1", &a);
    want.vacated("game:1");
    want.ended(&a, "closed");
    drop(a);
    wait_for_events(backend, want.0.len(), step, "after the resume").await;

    // Nothing more comes (no late leave or re-join of the resumed session,
    // nothing from node-2's lease running out).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let report = webhooks(backend);
    let events = report["events"].as_array().unwrap().clone();
    check_events(&events, &want);
    assert_eq!(report["rejected"], 0, "every signature was valid");
    assert_eq!(report["failed"], 0);
    let batches = report["batches"].as_u64().unwrap();
    assert!(
        batches >= 2 && (batches as usize) < events.len(),
        "{batches} batches for {} events: not batched",
        events.len()
    );
    let sent = presence_metric(&c.presence, "roomcast_webhook_events_sent_total");
    assert_eq!(sent as usize, events.len());
    assert_eq!(
        presence_metric(&c.presence, "roomcast_webhook_batches_sent_total"),
        batches
    );
    assert_eq!(
        presence_metric(&c.presence, "roomcast_webhook_failures_total"),
        0
    );
    assert_eq!(
        presence_metric(&c.presence, "roomcast_webhook_events_dropped_total"),
        0
    );
    drop((cc, d, e));
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_refuses_gets_the_same_events_again_until_it_accepts_them() {
    // The backend answers 500 to the first three webhook requests.
    let started = built();
    let c = cluster(Some(3));
    let backend = &c.backend;
    let mut want = Expected::default();

    let mut members = Vec::new();
    for gw in &c.nodes {
        let mut m = Member::connect(gw).await;
        m.join("shared").await;
        members.push(m);
    }
    want.occupied("shared");
    for m in &members {
        want.joined("shared", m);
    }
    // (Otherwise node-2's join and leave below could reach the presence
    // service before the other nodes' joins: "shared" would be vacated
    // and occupied again, rightly.)
    wait_for_events(
        backend,
        want.0.len(),
        Duration::from_secs(10),
        "joins, after the refusals",
    )
    .await;
    members[0].join("own-0").await;
    want.occupied("own-0");
    want.joined("own-0", &members[0]);
    members[1].join("own-1").await;
    want.occupied("own-1");
    want.joined("own-1", &members[1]);
    members[1].leave("own-1").await;
    want.left("own-1", &members[1]);
    want.vacated("own-1");
    members[2].leave("shared").await;
    want.left("shared", &members[2]);
    let gone = members.remove(0);
    want.left("own-0", &gone);
    want.vacated("own-0");
    want.left("shared", &gone);
    want.ended(&gone, "closed");
    drop(gone);

    wait_for_events(backend, want.0.len(), Duration::from_secs(10), "leaves").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let report = webhooks(backend);
    assert_eq!(report["failed"], 3, "the backend refused three requests");
    assert_eq!(report["rejected"], 0, "every signature was valid");
    let events = report["events"].as_array().unwrap().clone();
    check_events(&events, &want);
    let batches = report["batches"].as_u64().unwrap();
    assert!(
        (batches as usize) < events.len(),
        "{batches} batches for {} events: not batched",
        events.len()
    );
    assert_eq!(
        presence_metric(&c.presence, "roomcast_webhook_failures_total"),
        3
    );
    assert_eq!(
        presence_metric(&c.presence, "roomcast_webhook_events_sent_total") as usize,
        events.len()
    );
    drop(members);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
}

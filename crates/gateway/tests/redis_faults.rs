//! Redis faults never silence a room. Two gateways over a real Redis
//! Cluster (and a standalone Redis), rooms with a member on each node, then
//! the ordinary events of a Redis deployment: a master killed and restarted
//! empty, the whole cluster restarted, a master failed over to its replica,
//! a slot moved by `redis-cli --cluster reshard`, a subscriber connection
//! that cannot come back for a while. After each, every room delivers
//! across nodes again within 5 s, every acknowledged message reaches every
//! member once, and `roomcast_pubsub_rooms_unsubscribed` is back to 0.
//!
//! `ROOMCAST_FAULT_ROUNDS=N` scales the round counts down for a quick look
//! (default: the full 20 + 10 and 20 rounds).

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use roomcast_broker::redis::key_slot;
use roomcast_protocol::envelope::names;
use roomcast_protocol::{Codec, ServerFrame};
use roomcast_testkit::proxy::TcpProxy;
use roomcast_testkit::redis::{RedisCluster, RedisServer};
use roomcast_testkit::ws::{join, Event, RawClient};
use roomcast_testkit::{http_request, wait_until, Gateway};
use serde_json::json;

/// How soon a room must deliver across nodes again after a fault.
const REPAIR_WITHIN: Duration = Duration::from_secs(5);
const UNSUBSCRIBED: &str = "roomcast_pubsub_rooms_unsubscribed ";

fn node(redis_url: &str, id: &str) -> Gateway {
    Gateway::start(&[
        ("ROOMCAST_REDIS__URL", redis_url),
        ("ROOMCAST_NODE__ID", id),
        ("ROOMCAST_AUTH__RESUME_SECRET", "redis-faults"),
        ("ROOMCAST_REDIS__COMMAND_TIMEOUT_MS", "1000"),
        ("ROOMCAST_HISTORY__SIZE", "1000"),
    ])
}

fn rounds(full: usize) -> usize {
    std::env::var("ROOMCAST_FAULT_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(full, |n: usize| n.min(full))
}

/// One message as a member saw it, or as a publish was acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Seen {
    room: String,
    epoch: String,
    offset: u64,
}

/// Publishes through the node's HTTP API; the acknowledged position, or
/// `None` when the node answered anything but 200 (Redis unavailable).
fn publish(addr: SocketAddr, room: &str, data: serde_json::Value) -> Option<Seen> {
    let body = json!({ "room": room, "data": data }).to_string();
    let (status, reply) = http_request(
        addr,
        "POST",
        "/api/publish",
        &[("Authorization", "Bearer test-key")],
        &body,
    )
    .ok()?;
    if status != 200 {
        return None;
    }
    let reply: serde_json::Value = serde_json::from_str(&reply).ok()?;
    Some(Seen {
        room: room.to_string(),
        epoch: reply["epoch"].as_str()?.to_string(),
        offset: reply["offset"].as_u64()?,
    })
}

/// A client on one node that joined every room, and what it received.
struct Member {
    client: RawClient,
    seen: Vec<Seen>,
    /// The `data` of every message received, per room.
    data: HashMap<String, Vec<serde_json::Value>>,
}

impl Member {
    async fn join(gw: &Gateway, rooms: &[String]) -> Member {
        let (mut client, _) = RawClient::ready(&gw.ws_url(), Codec::Json).await;
        for (i, room) in rooms.iter().enumerate() {
            let reply = client.request(join(i as u64 + 1, room)).await;
            assert!(matches!(reply, ServerFrame::Joined { .. }), "{reply:?}");
        }
        Member {
            client,
            seen: Vec::new(),
            data: HashMap::new(),
        }
    }

    /// Reads whatever arrives within `wait`.
    async fn drain(&mut self, wait: Duration) {
        let deadline = Instant::now() + wait;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.client.next_event_within(left).await {
                Some(Event::Frame(ServerFrame::Message {
                    room,
                    offset,
                    epoch,
                    data,
                    ..
                })) => {
                    self.data.entry(room.clone()).or_default().push(data);
                    self.seen.push(Seen {
                        room,
                        epoch,
                        offset,
                    });
                }
                Some(Event::Frame(_)) => {}
                Some(Event::Closed(code)) => panic!("member closed with {code}"),
                None => return,
            }
        }
    }

    fn got_tag(&self, room: &str, tag: &str) -> bool {
        self.data
            .get(room)
            .is_some_and(|d| d.iter().any(|v| v["tag"] == tag))
    }
}

/// After a fault: publishes a probe tagged `tag` to every room through
/// `publisher` until each member has one from each room, and returns how
/// long that took. Every acknowledged publish is added to `acked`.
async fn every_room_delivers(
    tag: &str,
    rooms: &[String],
    publisher: SocketAddr,
    members: &mut [Member],
    acked: &mut Vec<Seen>,
) -> Duration {
    let started = Instant::now();
    let mut attempt = 0;
    loop {
        let missing: Vec<&String> = rooms
            .iter()
            .filter(|r| members.iter().any(|m| !m.got_tag(r, tag)))
            .collect();
        if missing.is_empty() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < REPAIR_WITHIN * 3,
            "{tag}: {} rooms still silent after {:?}: {:?}",
            missing.len(),
            started.elapsed(),
            missing.iter().take(5).collect::<Vec<_>>()
        );
        attempt += 1;
        for room in missing {
            if let Some(seen) = publish(publisher, room, json!({"tag": tag, "try": attempt})) {
                acked.push(seen);
            }
        }
        for m in members.iter_mut() {
            m.drain(Duration::from_millis(150)).await;
        }
    }
}

/// Every acknowledged message reached every member, none twice.
async fn nothing_lost_or_repeated(what: &str, members: &mut [Member], acked: &[Seen]) {
    for (i, m) in members.iter_mut().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got: BTreeSet<&Seen> = m.seen.iter().collect();
            let lost: Vec<&Seen> = acked.iter().filter(|a| !got.contains(a)).collect();
            if lost.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: member {i} never got {} acknowledged messages, e.g. {:?}",
                lost.len(),
                &lost[..lost.len().min(5)]
            );
            m.drain(Duration::from_millis(200)).await;
        }
        let mut counts: HashMap<&Seen, usize> = HashMap::new();
        for s in &m.seen {
            *counts.entry(s).or_default() += 1;
        }
        let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            twice.is_empty(),
            "{what}: member {i} got duplicates: {twice:?}"
        );
    }
}

fn no_room_unsubscribed(what: &str, nodes: &[&Gateway]) {
    for gw in nodes {
        assert!(
            wait_until(REPAIR_WITHIN, || gw.metric(UNSUBSCRIBED) == 0),
            "{what}: {} rooms still without a subscription on {}",
            gw.metric(UNSUBSCRIBED),
            gw.addr
        );
    }
}

/// After a fault: every room delivers again (published through the first
/// node) within [`REPAIR_WITHIN`], and no node counts a room unsubscribed.
async fn repaired_in_time(
    what: &str,
    tag: &str,
    rooms: &[String],
    nodes: [&Gateway; 2],
    members: &mut [Member],
    acked: &mut Vec<Seen>,
) -> Duration {
    let took = every_room_delivers(tag, rooms, nodes[0].addr, members, acked).await;
    assert!(
        took <= REPAIR_WITHIN,
        "{what}: rooms delivered again only after {took:?}"
    );
    no_room_unsubscribed(what, &nodes);
    took
}

fn room_names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_room_delivers_again_after_master_restarts_and_whole_cluster_restarts() {
    let mut cluster = RedisCluster::start();
    let a = node(&cluster.url(), "node-a");
    let b = node(&cluster.url(), "node-b");
    let rooms = room_names("r", 50);
    let mut members = vec![
        Member::join(&a, &rooms).await,
        Member::join(&b, &rooms).await,
    ];
    let mut acked = Vec::new();
    every_room_delivers("start", &rooms, a.addr, &mut members, &mut acked).await;

    let (single, whole) = (rounds(20), rounds(10));
    let mut took = Vec::new();
    for round in 0..single + whole {
        let what = if round < single {
            // Each master in turn, killed (-9) and started again empty.
            let port = cluster.ports()[round % 3];
            cluster.node_on(port).restart();
            format!("round {round}: master {port} restarted")
        } else {
            for port in cluster.ports() {
                cluster.node_on(port).stop();
            }
            for port in cluster.ports() {
                cluster.node_on(port).restart();
            }
            format!("round {round}: whole cluster restarted")
        };
        cluster.wait_ok(Duration::from_secs(30));
        let tag = format!("round-{round}");
        took.push(repaired_in_time(&what, &tag, &rooms, [&a, &b], &mut members, &mut acked).await);
    }
    nothing_lost_or_repeated("restarts", &mut members, &acked).await;
    let worst = took.iter().max().unwrap();
    eprintln!(
        "{} rounds ({single} master restarts, {whole} whole-cluster restarts): 0 silent rooms; \
         every room delivering again after at most {worst:?} (mean {:?}); {} acked messages, all delivered once to both nodes; \
         resubscribes: node-a {}, node-b {}",
        took.len(),
        took.iter().sum::<Duration>() / took.len() as u32,
        acked.len(),
        a.metric("roomcast_pubsub_resubscribes_total "),
        b.metric("roomcast_pubsub_resubscribes_total "),
    );
}

/// `INFO replication` of a master: its offset, and the lowest offset its
/// replicas confirmed.
fn replication_caught_up(cluster: &mut RedisCluster, master: u16) -> bool {
    let info = cluster.node_on(master).cmd(&["INFO", "replication"]);
    let own: Option<u64> = info
        .lines()
        .find_map(|l| l.strip_prefix("master_repl_offset:"))
        .and_then(|v| v.trim().parse().ok());
    let replicas: Vec<u64> = info
        .lines()
        .filter(|l| l.starts_with("slave") && l.contains("offset="))
        .filter_map(|l| {
            l.split(',')
                .find_map(|kv| kv.strip_prefix("offset="))
                .and_then(|v| v.trim().parse().ok())
        })
        .collect();
    matches!(own, Some(o) if !replicas.is_empty() && replicas.iter().all(|r| *r >= o))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_failed_over_to_its_replica_keeps_every_room_delivering_and_every_acked_message() {
    let mut cluster = RedisCluster::start_with(1, 1000);
    let a = node(&cluster.url(), "node-a");
    let b = node(&cluster.url(), "node-b");
    let rooms = room_names("f", 50);
    let mut members = vec![
        Member::join(&a, &rooms).await,
        Member::join(&b, &rooms).await,
    ];
    let mut acked = Vec::new();
    let mut took = Vec::new();
    for round in 0..rounds(20) {
        // Messages acked before the fault, and replicated.
        every_room_delivers(
            &format!("before-{round}"),
            &rooms,
            a.addr,
            &mut members,
            &mut acked,
        )
        .await;
        let masters = cluster.master_ports();
        let victim = masters[round % masters.len()];
        assert!(
            wait_until(Duration::from_secs(10), || replication_caught_up(
                &mut cluster,
                victim
            )),
            "round {round}: the replica of {victim} did not catch up"
        );
        let before: HashMap<String, Seen> =
            acked.iter().map(|s| (s.room.clone(), s.clone())).collect();
        cluster.node_on(victim).stop();
        // The replica takes over once the others see the master gone.
        assert!(
            wait_until(Duration::from_secs(30), || !cluster
                .master_ports()
                .contains(&victim)
                && cluster.master_ports().len() == 3),
            "round {round}: no replica of {victim} promoted"
        );
        cluster.wait_ok(Duration::from_secs(30));
        let what = format!("round {round}: master {victim} failed over");
        let tag = format!("after-{round}");
        took.push(repaired_in_time(&what, &tag, &rooms, [&a, &b], &mut members, &mut acked).await);
        // The replica had every message acked before the kill: no room
        // started a new epoch, and history still holds the last of them.
        let (mut reader, _) = RawClient::ready(&b.ws_url(), Codec::Json).await;
        for (i, room) in rooms.iter().enumerate() {
            let last = &before[room];
            let reply = reader
                .request(roomcast_protocol::ClientFrame::Join {
                    id: Some(i as u64 + 1),
                    room: room.clone(),
                    since: Some(roomcast_protocol::Since {
                        offset: last.offset - 1,
                        epoch: last.epoch.clone(),
                    }),
                    presence: None,
                })
                .await;
            match reply {
                ServerFrame::Joined {
                    recovered, epoch, ..
                } => assert!(
                    recovered == Some(true) && epoch == last.epoch,
                    "{what}: {room} lost history the replica had (epoch {epoch}, was {})",
                    last.epoch
                ),
                other => panic!("{what}: {other:?}"),
            }
        }
        reader.abort();
        // The old master comes back as a replica of the new one.
        cluster.node_on(victim).restart();
        cluster.wait_ok(Duration::from_secs(30));
        assert!(
            wait_until(Duration::from_secs(30), || {
                let role = cluster.node_on(victim).cmd(&["ROLE"]);
                role.starts_with("slave") && role.contains("connected")
            }),
            "round {round}: {victim} did not rejoin as a replica"
        );
    }
    nothing_lost_or_repeated("failovers", &mut members, &acked).await;
    eprintln!(
        "{} failovers: 0 silent rooms; every room delivering again after at most {:?}; {} acked messages, all delivered once to both nodes",
        took.len(),
        took.iter().max().unwrap(),
        acked.len()
    );
}

/// The master serving `slot`, and its id and slot ranges (`CLUSTER NODES`).
fn owner(cluster: &RedisCluster, slot: u16) -> (u16, String, Vec<(u16, u16)>) {
    let nodes = cluster.cmd(&["CLUSTER", "NODES"]);
    for line in nodes.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 9 || !fields[2].contains("master") {
            continue;
        }
        let ranges: Vec<(u16, u16)> = fields[8..]
            .iter()
            .filter(|r| !r.starts_with('['))
            .filter_map(|r| {
                let (lo, hi) = r.split_once('-').unwrap_or((r, r));
                Some((lo.parse().ok()?, hi.parse().ok()?))
            })
            .collect();
        if ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&slot)) {
            let port = fields[1]
                .split('@')
                .next()
                .unwrap()
                .rsplit_once(':')
                .unwrap()
                .1;
            return (port.parse().unwrap(), fields[0].to_string(), ranges);
        }
    }
    panic!("no master serves slot {slot}:\n{nodes}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_whose_slot_is_resharded_keeps_delivering() {
    let mut cluster = RedisCluster::start();
    // A room in the lowest slot of the first master: the slot that
    // `redis-cli --cluster reshard --cluster-slots 1` moves first.
    let (_, _, ranges) = owner(&cluster, 0);
    let lowest = ranges.iter().map(|(lo, _)| *lo).min().unwrap();
    let room = (0..200_000)
        .map(|i| format!("moving-{i}"))
        .find(|r| key_slot(&names::room_channel(r)) == lowest)
        .expect("a room name in the slot");
    let (from_port, from_id, _) = owner(&cluster, lowest);
    let to_port = *cluster.ports().iter().find(|p| **p != from_port).unwrap();
    let to_id = cluster.node_on(to_port).cmd(&["CLUSTER", "MYID"]);

    let a = node(&cluster.url(), "node-a");
    let b = node(&cluster.url(), "node-b");
    let rooms = vec![room.clone()];
    let mut members = vec![
        Member::join(&a, &rooms).await,
        Member::join(&b, &rooms).await,
    ];
    let mut probes = Vec::new();
    every_room_delivers("before", &rooms, a.addr, &mut members, &mut probes).await;
    let acked = Arc::new(Mutex::new(Vec::new()));

    // A publisher keeps going through the move.
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (stop, acked, room, addr) = (stop.clone(), acked.clone(), room.clone(), a.addr);
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                if let Some(seen) = publish(addr, &room, json!({"tag": "during", "i": i})) {
                    acked.lock().unwrap().push(seen);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let output = std::process::Command::new(roomcast_testkit::redis::redis_binary("redis-cli"))
        .args([
            "--cluster",
            "reshard",
            &format!("127.0.0.1:{from_port}"),
            "--cluster-from",
            &from_id,
            "--cluster-to",
            &to_id,
            "--cluster-slots",
            "1",
            "--cluster-yes",
        ])
        .output()
        .expect("redis-cli --cluster reshard");
    assert!(output.status.success(), "reshard failed: {output:?}");
    let moved = Instant::now();
    assert_eq!(
        owner(&cluster, lowest).0,
        to_port,
        "the reshard did not move slot {lowest}"
    );
    // Delivery resumes within 5 s of the move (the probe is tagged after it).
    let t = every_room_delivers("after", &rooms, a.addr, &mut members, &mut probes).await;
    let since_move = moved.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    publisher.join().unwrap();
    assert!(
        since_move <= REPAIR_WITHIN,
        "room {room} delivered again only {since_move:?} after its slot moved (probe {t:?})"
    );
    no_room_unsubscribed("reshard", &[&a, &b]);
    let mut acked = acked.lock().unwrap().clone();
    acked.extend(probes);
    nothing_lost_or_repeated("reshard", &mut members, &acked).await;
    eprintln!(
        "slot {lowest} ({room}) moved {from_port} -> {to_port}: delivering again {since_move:?} after the move; \
         {} acked messages, all delivered once to both nodes; shortfalls seen: node-a {}, node-b {}",
        acked.len(),
        a.metric("roomcast_pubsub_subscription_shortfalls_total "),
        b.metric("roomcast_pubsub_subscription_shortfalls_total "),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_cannot_reconnect_is_counted_unready_and_repaired_when_it_can() {
    let redis = RedisServer::start();
    let upstream = format!("127.0.0.1:{}", redis.port()).parse().unwrap();
    let proxy = TcpProxy::start(upstream).await;
    let a = node(&format!("redis://{}", proxy.addr), "node-a");
    let b = node(&redis.url(), "node-b");
    let rooms = room_names("blocked", 5);
    let mut members = vec![Member::join(&a, &rooms).await];
    let mut acked = Vec::new();
    every_room_delivers("before", &rooms, b.addr, &mut members, &mut acked).await;
    assert_eq!(a.metric(UNSUBSCRIBED), 0);
    let ready = |gw: &Gateway| {
        http_request(gw.addr, "GET", "/readyz", &[], "")
            .map(|r| r.0)
            .ok()
    };
    assert_eq!(ready(&a), Some(200));

    // The subscriber's connection dies and cannot come back; the command
    // connection, already open, keeps working.
    proxy.refuse_new();
    redis.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert!(
        wait_until(REPAIR_WITHIN, || a.metric(UNSUBSCRIBED) == 5),
        "the metric did not count the 5 rooms (it says {})",
        a.metric(UNSUBSCRIBED)
    );
    assert_eq!(
        ready(&a),
        Some(503),
        "/readyz on a node that cannot subscribe"
    );
    for (i, room) in rooms.iter().enumerate() {
        acked.push(publish(b.addr, room, json!({"tag": "blocked", "i": i})).expect("publish on b"));
    }

    proxy.heal();
    let healed = Instant::now();
    assert!(
        wait_until(REPAIR_WITHIN, || a.metric(UNSUBSCRIBED) == 0),
        "still {} rooms unsubscribed after the link healed",
        a.metric(UNSUBSCRIBED)
    );
    let repaired = healed.elapsed();
    assert!(wait_until(REPAIR_WITHIN, || ready(&a) == Some(200)));
    // What was published meanwhile comes from history, once, in order.
    nothing_lost_or_repeated("blocked", &mut members, &acked).await;
    eprintln!("subscriptions back {repaired:?} after the link healed; the messages published meanwhile delivered from history");
}

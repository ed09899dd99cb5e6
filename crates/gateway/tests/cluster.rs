//! Several gateway nodes over real Redis (a single server, and a 3-master
//! Redis Cluster with sharded pub/sub): every member on every node receives
//! every message once, with contiguous offsets, in one order; Redis outages
//! answer `unavailable` and never ack what was not stored.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use roomcast_protocol::{ClientFrame, Codec, ErrorCode, ServerFrame, Since};
use roomcast_testkit::redis::{RedisCluster, RedisServer};
use roomcast_testkit::ws::{ack_offset, join, RawClient};
use roomcast_testkit::{http_request, Gateway};
use serde_json::json;

const SECRET: &str = "cluster-test-resume-secret";

fn node(redis_url: &str, id: &str) -> Gateway {
    Gateway::start(&[
        ("ROOMCAST_REDIS__URL", redis_url),
        ("ROOMCAST_NODE__ID", id),
        ("ROOMCAST_AUTH__RESUME_SECRET", SECRET),
        ("ROOMCAST_LIMITS__MESSAGES_PER_SECOND", "100000"),
        ("ROOMCAST_LIMITS__MESSAGE_BURST", "100000"),
        ("ROOMCAST_HISTORY__SIZE", "1000"),
    ])
}

/// Two publishers on two nodes, two members on each of three nodes: all
/// members see offsets 1..=2n, and the same data in the same order.
async fn cross_node_order(redis_url: &str) {
    let nodes: Vec<Gateway> = ["node-a", "node-b", "node-c"]
        .iter()
        .map(|id| node(redis_url, id))
        .collect();
    let mut members = Vec::new();
    for (i, gw) in nodes.iter().enumerate() {
        for codec in Codec::ALL {
            let (mut c, _) = RawClient::ready(&gw.ws_url(), codec).await;
            c.request(join(1, "order")).await;
            members.push((i, c));
        }
    }
    const PER_PUBLISHER: u64 = 100;
    let mut publishers = Vec::new();
    for (p, gw) in nodes.iter().take(2).enumerate() {
        let url = gw.ws_url();
        publishers.push(tokio::spawn(async move {
            let (mut c, _) = RawClient::ready(&url, Codec::Json).await;
            c.request(join(1, "order")).await;
            for i in 0..PER_PUBLISHER {
                let reply = c
                    .request(ClientFrame::Publish {
                        id: Some(10 + i),
                        room: "order".into(),
                        data: json!({"p": p, "i": i}),
                        key: None,
                    })
                    .await;
                assert!(
                    matches!(
                        reply,
                        ServerFrame::Ack {
                            offset: Some(_),
                            ..
                        }
                    ),
                    "{reply:?}"
                );
            }
        }));
    }
    for p in publishers {
        p.await.unwrap();
    }
    let mut sequences = Vec::new();
    for (node, mut member) in members {
        let mut seq = Vec::new();
        for expected in 1..=2 * PER_PUBLISHER {
            let (offset, data) = member
                .recv_until(|f| match f {
                    ServerFrame::Message { offset, data, .. } => Some((*offset, data.clone())),
                    _ => None,
                })
                .await;
            assert_eq!(offset, expected, "member on node {node}");
            seq.push(data);
        }
        sequences.push(seq);
    }
    for seq in &sequences[1..] {
        assert_eq!(seq, &sequences[0], "members disagree on the order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_on_three_nodes_receive_two_publishers_in_one_order() {
    let redis = RedisServer::start();
    cross_node_order(&redis.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cross_node_order_holds_on_a_redis_cluster_with_sharded_pubsub() {
    let cluster = RedisCluster::start();
    cross_node_order(&cluster.url()).await;
    // The room's keys and channel share one slot; the channel is sharded.
    let slot_key = roomcast_protocol::envelope::names::room_meta("order");
    let port = cluster.port_for_key(&slot_key);
    let node = cluster.nodes().iter().find(|n| n.port() == port).unwrap();
    assert!(node.cmd(&["EXISTS", &slot_key]).contains('1'));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_answers_unavailable_and_delivery_comes_back_by_itself() {
    let mut redis = RedisServer::start();
    let a = node(&redis.url(), "node-a");
    let b = node(&redis.url(), "node-b");
    let (mut publisher, _) = RawClient::ready(&a.ws_url(), Codec::Json).await;
    let (mut member, _) = RawClient::ready(&b.ws_url(), Codec::Json).await;
    publisher.request(join(1, "r")).await;
    let ServerFrame::Joined {
        epoch: old_epoch, ..
    } = member.request(join(1, "r")).await
    else {
        panic!()
    };
    let ack = publisher
        .request(ClientFrame::Publish {
            id: Some(2),
            room: "r".into(),
            data: json!("before"),
            key: None,
        })
        .await;
    assert_eq!(ack_offset(&ack), Some(1), "{ack:?}");
    let (before, _) = member.next_message("").await;
    assert_eq!(before, json!("before"));

    redis.stop();
    let mut took = Vec::new();
    for i in 0..5 {
        let started = std::time::Instant::now();
        let reply = publisher
            .request(ClientFrame::Publish {
                id: Some(100 + i),
                room: "r".into(),
                data: json!("during"),
                key: None,
            })
            .await;
        assert!(
            matches!(
                reply,
                ServerFrame::Error {
                    code: ErrorCode::Unavailable,
                    ..
                }
            ),
            "publish during the outage: {reply:?}"
        );
        took.push(started.elapsed());
    }
    // Fail fast: the one command on the wire while the node learns that
    // Redis died may wait for the command timeout (2 s); every other publish
    // answers at once.
    let slow = took
        .iter()
        .filter(|t| **t >= Duration::from_millis(200))
        .count();
    assert!(
        slow <= 1 && took.iter().all(|t| *t <= Duration::from_millis(2500)),
        "{took:?}"
    );
    let (status, _) = http_request(
        a.addr,
        "POST",
        "/api/publish",
        &[("Authorization", "Bearer test-key")],
        r#"{"room":"r","data":1}"#,
    )
    .unwrap();
    assert_eq!(status, 503);

    redis.restart();
    // Delivery across nodes comes back by itself (reconnect + resubscribe).
    let mut delivered = false;
    for attempt in 0..100 {
        let reply = publisher
            .request(ClientFrame::Publish {
                id: Some(1000 + attempt),
                room: "r".into(),
                data: json!("after"),
                key: None,
            })
            .await;
        if matches!(reply, ServerFrame::Ack { .. }) {
            if let Some(roomcast_testkit::ws::Event::Frame(ServerFrame::Message { data, .. })) =
                member.next_event_within(Duration::from_millis(500)).await
            {
                assert_eq!(data, json!("after"));
                delivered = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(delivered, "cross-node delivery did not come back");
    // Redis lost its data: the room has a new epoch, the old one cannot recover.
    // Each node reconnects on its own schedule: a join may still answer
    // `unavailable` for a moment, as a client would see and retry.
    let (mut late, _) = RawClient::ready(&b.ws_url(), Codec::Json).await;
    let mut joined = None;
    for attempt in 0..50 {
        let reply = late
            .request(ClientFrame::Join {
                id: Some(attempt + 1),
                room: "r".into(),
                since: Some(Since {
                    offset: 1,
                    epoch: old_epoch.clone(),
                }),
                presence: None,
            })
            .await;
        if !matches!(
            reply,
            ServerFrame::Error {
                code: ErrorCode::Unavailable,
                ..
            }
        ) {
            joined = Some(reply);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let joined = joined.expect("node b never reconnected to Redis");
    match joined {
        ServerFrame::Joined {
            recovered, epoch, ..
        } => {
            assert_eq!(recovered, Some(false));
            assert_ne!(epoch, old_epoch);
        }
        other => panic!("{other:?}"),
    }
    // Nothing that failed was stored: every message of the new epoch was acked.
    let raw = redis.cmd(&[
        "XLEN",
        &roomcast_protocol::envelope::names::room_history("r"),
    ]);
    let stored: u64 = raw.trim().parse().unwrap_or(0);
    assert!(stored >= 1, "acked messages must be in history: {raw}");
    let (_, metrics) = http_request(a.addr, "GET", "/metrics", &[], "").unwrap();
    assert!(
        metrics.contains("roomcast_broker_errors_total"),
        "{metrics}"
    );
    let _ = (a, b);
}

/// A node reads a room's position from Redis on one connection and gets the
/// room's messages over pub/sub on another, so a join can read offset P
/// before the node has dispatched message P. Members that join (and join
/// again with `since`) on node B while node A publishes fast must still get
/// every offset after the one `joined` names exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_on_one_node_while_another_publishes_fast_get_no_offset_twice() {
    const MAX_MESSAGES: u64 = 100_000;
    const JOINERS: usize = 40;
    let redis = RedisServer::start();
    let a = node(&redis.url(), "node-a");
    let b = node(&redis.url(), "node-b");
    // A member that stays keeps node B subscribed all along.
    let (mut watcher, _) = RawClient::ready(&b.ws_url(), Codec::Json).await;
    watcher.request(join(1, "fast")).await;

    // Publishes until every joiner has joined again (at most MAX_MESSAGES).
    let stop = Arc::new(AtomicBool::new(false));
    let a_url = a.ws_url();
    let stop_publishing = stop.clone();
    let publisher = tokio::spawn(async move {
        let (mut c, _) = RawClient::ready(&a_url, Codec::Json).await;
        c.request(join(1, "fast")).await;
        let mut i = 0u64;
        while !stop_publishing.load(Ordering::Relaxed) && i < MAX_MESSAGES {
            i += 1;
            c.send(&ClientFrame::Publish {
                id: None,
                room: "fast".into(),
                data: json!(i),
                key: None,
            })
            .await;
            if i.is_multiple_of(5) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        // The last publish acked: every message is stored.
        let last = c
            .request(ClientFrame::Publish {
                id: Some(2),
                room: "fast".into(),
                data: json!("end"),
                key: None,
            })
            .await;
        ack_offset(&last).expect("acked")
    });

    // Each joiner joins, leaves, and joins again with `since` the offset its
    // first join named, while the messages flow.
    let mut joiners = Vec::new();
    for k in 0..JOINERS {
        let url = b.ws_url();
        joiners.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(3 * k as u64)).await;
            let (mut c, _) = RawClient::ready(&url, Codec::ALL[k % 2]).await;
            let (first, epoch) = match c.request(join(1, "fast")).await {
                ServerFrame::Joined { offset, epoch, .. } => (offset, epoch),
                other => panic!("{other:?}"),
            };
            // The first frames after `joined` must follow its offset.
            let mut next = first + 1;
            for _ in 0..5 {
                let offset = c
                    .recv_until(|f| match f {
                        ServerFrame::Message { offset, .. } => Some(*offset),
                        _ => None,
                    })
                    .await;
                assert_eq!(offset, next, "joiner {k}: after joined at {first}");
                next += 1;
            }
            c.request(ClientFrame::Leave {
                id: Some(2),
                room: "fast".into(),
            })
            .await;
            let since = next - 1;
            match c
                .request(ClientFrame::Join {
                    id: Some(3),
                    room: "fast".into(),
                    since: Some(Since {
                        offset: since,
                        epoch,
                    }),
                    presence: None,
                })
                .await
            {
                ServerFrame::Joined { recovered, .. } => {
                    assert_eq!(recovered, Some(true), "joiner {k}")
                }
                other => panic!("{other:?}"),
            }
            (k, c, since + 1)
        }));
    }
    let mut rejoined = Vec::new();
    for j in joiners {
        rejoined.push(j.await.unwrap());
    }
    stop.store(true, Ordering::Relaxed);
    let last = publisher.await.unwrap();
    for (k, mut c, mut next) in rejoined {
        while next <= last {
            let offset = c
                .recv_until(|f| match f {
                    ServerFrame::Message { offset, .. } => Some(*offset),
                    _ => None,
                })
                .await;
            assert_eq!(offset, next, "joiner {k}: gap or duplicate after rejoining");
            next += 1;
        }
    }
    let mut next = 1;
    while next <= last {
        let offset = watcher.next_message("fast").await.1;
        assert_eq!(offset, next, "the member that stayed");
        next += 1;
    }
}

/// Joins that reach one node at the same moment share history reads (one
/// per room and epoch at a time). Each still gets exactly its own part:
/// the messages after its own `since`, nothing for another epoch, only the
/// position without `since`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_joins_of_one_room_each_recover_exactly_their_own_gap() {
    let redis = RedisServer::start();
    let gw = node(&redis.url(), "node-a");
    let (mut publisher, _) = RawClient::ready(&gw.ws_url(), Codec::Json).await;
    let epoch = match publisher.request(join(1, "shared")).await {
        ServerFrame::Joined { epoch, .. } => epoch,
        other => panic!("{other:?}"),
    };
    for i in 1..=50u64 {
        let reply = publisher
            .request(ClientFrame::Publish {
                id: Some(100 + i),
                room: "shared".into(),
                data: json!(i),
                key: None,
            })
            .await;
        assert_eq!(ack_offset(&reply), Some(i));
    }
    let mut clients = Vec::new();
    for k in 0..60u64 {
        let (c, _) = RawClient::ready(&gw.ws_url(), Codec::ALL[k as usize % 2]).await;
        clients.push(c);
    }
    // Every join goes out before any answer is read.
    let wanted: Vec<Option<Since>> = (0..60u64)
        .map(|k| match k % 6 {
            5 => None,
            4 => Some(Since {
                offset: k % 50,
                epoch: "another-epoch".into(),
            }),
            _ => Some(Since {
                offset: k % 51,
                epoch: epoch.clone(),
            }),
        })
        .collect();
    for (c, since) in clients.iter_mut().zip(&wanted) {
        c.send(&ClientFrame::Join {
            id: Some(1),
            room: "shared".into(),
            since: since.clone(),
            presence: None,
        })
        .await;
    }
    let mut checked = Vec::new();
    for (k, (mut c, since)) in clients.into_iter().zip(wanted).enumerate() {
        let joined = c.recv().await;
        let ServerFrame::Joined {
            offset, recovered, ..
        } = joined
        else {
            panic!("client {k}: {joined:?}");
        };
        assert_eq!(offset, 50, "client {k}");
        match since {
            None => assert_eq!(recovered, None, "client {k}"),
            Some(s) if s.epoch != epoch => assert_eq!(recovered, Some(false), "client {k}"),
            Some(s) => {
                assert_eq!(recovered, Some(true), "client {k}");
                for expected in s.offset + 1..=50 {
                    let got = c.next_message("shared").await;
                    assert_eq!(got, (json!(expected), expected), "client {k}");
                }
            }
        }
        checked.push(c);
    }
    // Nothing more was queued: the next message each gets is a live one.
    let reply = publisher
        .request(ClientFrame::Publish {
            id: Some(1000),
            room: "shared".into(),
            data: json!("live"),
            key: None,
        })
        .await;
    let live = ack_offset(&reply).unwrap();
    assert_eq!(live, 51);
    // The sixty joins shared reads (the publisher's join was one more).
    let reads = gw.metric("roomcast_redis_history_reads_total");
    assert!((2..=50).contains(&reads), "{reads} reads for 61 joins");
    for (k, mut c) in checked.into_iter().enumerate() {
        assert_eq!(
            c.next_message("shared").await,
            (json!("live"), live),
            "client {k}"
        );
    }
}

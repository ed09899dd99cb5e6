//! Several gateway nodes over real Redis (a single server, and a 3-master
//! Redis Cluster with sharded pub/sub): every member on every node receives
//! every message once, with contiguous offsets, in one order; Redis outages
//! answer `unavailable` and never ack what was not stored.

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

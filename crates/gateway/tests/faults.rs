//! Faults between a node and what it depends on: the link to Redis stalled
//! and cut (through a proxy the test controls), and the presence service
//! frozen. Publishes fail fast with `unavailable`, nothing acknowledged is
//! lost, service comes back by itself, and delivery never waits on presence.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use roomcast_protocol::{ClientFrame, Codec, ErrorCode, ServerFrame};
use roomcast_testkit::proxy::TcpProxy;
use roomcast_testkit::redis::RedisServer;
use roomcast_testkit::ws::{join, Event, RawClient};
use roomcast_testkit::{http_request, wait_until, Gateway, PresenceService};
use serde_json::json;

fn node(redis_url: &str, id: &str, extra: &[(&str, &str)]) -> Gateway {
    let mut env = vec![
        ("ROOMCAST_REDIS__URL", redis_url),
        ("ROOMCAST_NODE__ID", id),
        ("ROOMCAST_AUTH__RESUME_SECRET", "faults"),
        ("ROOMCAST_REDIS__COMMAND_TIMEOUT_MS", "500"),
        ("ROOMCAST_HISTORY__SIZE", "5000"),
    ];
    env.extend_from_slice(extra);
    Gateway::start(&env)
}

/// Publishes once; `Some(offset)` when acked, `None` when `unavailable`.
async fn publish(c: &mut RawClient, id: u64) -> (Option<u64>, Duration) {
    let started = Instant::now();
    let reply = c
        .request(ClientFrame::Publish {
            id: Some(id),
            room: "f".into(),
            data: json!(id),
            key: None,
        })
        .await;
    let took = started.elapsed();
    match reply {
        ServerFrame::Ack { offset, .. } => (offset, took),
        ServerFrame::Error {
            code: ErrorCode::Unavailable,
            ..
        } => (None, took),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_or_cut_redis_link_fails_fast_loses_nothing_acked_and_heals_by_itself() {
    let redis = RedisServer::start();
    let upstream = format!("127.0.0.1:{}", redis.port()).parse().unwrap();
    let proxy = TcpProxy::start(upstream).await;
    let a = node(&format!("redis://{}", proxy.addr), "node-a", &[]);
    let b = node(&redis.url(), "node-b", &[]);
    let (mut member, _) = RawClient::ready(&b.ws_url(), Codec::Json).await;
    member.request(join(1, "f")).await;
    let (mut publisher, _) = RawClient::ready(&a.ws_url(), Codec::Json).await;
    publisher.request(join(1, "f")).await;

    let mut acked = BTreeSet::new();
    let mut id = 100;
    for round in ["before", "stalled", "healed-1", "cut", "healed-2"] {
        match round {
            "stalled" => proxy.stall(),
            "cut" => proxy.cut(),
            "healed-1" | "healed-2" => proxy.heal(),
            _ => {}
        }
        let mut failures = 0;
        let mut successes = 0;
        let deadline =
            Instant::now() + Duration::from_secs(if round.starts_with("healed") { 20 } else { 3 });
        while Instant::now() < deadline && (successes < 5 || round == "stalled" || round == "cut") {
            id += 1;
            let (offset, took) = publish(&mut publisher, id).await;
            match offset {
                Some(o) => {
                    successes += 1;
                    acked.insert(o);
                }
                None => {
                    failures += 1;
                    // Fail fast: within the command timeout and a margin.
                    assert!(
                        took < Duration::from_millis(1500),
                        "{round}: unavailable took {took:?}"
                    );
                }
            }
            if failures >= 4 && (round == "stalled" || round == "cut") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        match round {
            "stalled" | "cut" => assert!(failures >= 4, "{round}: publishes kept succeeding"),
            _ => assert!(
                successes >= 5,
                "{round}: service did not come back ({successes} acks)"
            ),
        }
    }
    // Every acked message reached the member on the other node, in order,
    // once; nothing that was acked is missing.
    let last = *acked.iter().max().unwrap();
    let mut seen = Vec::new();
    while seen.last().copied().unwrap_or(0) < last {
        match member.next_event_within(Duration::from_secs(10)).await {
            Some(Event::Frame(ServerFrame::Message { offset, .. })) => seen.push(offset),
            Some(Event::Frame(_)) => {}
            other => panic!("member stopped receiving at {:?}: {other:?}", seen.last()),
        }
    }
    let expected: Vec<u64> = (1..=last).collect();
    assert_eq!(seen, expected, "gap or duplicate on the other node");
    assert!(
        acked.iter().all(|o| seen.contains(o)),
        "an acked message was lost"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_presence_service_does_not_delay_delivery() {
    let redis = RedisServer::start();
    let presence = PresenceService::start(&redis.url(), &[]);
    let extra = [("ROOMCAST_PRESENCE__URL", presence.url())];
    let extra: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let a = node(&redis.url(), "node-a", &extra);
    let b = node(&redis.url(), "node-b", &extra);
    let (mut member, _) = RawClient::ready(&b.ws_url(), Codec::Json).await;
    member.request(join(1, "f")).await;
    let (mut publisher, _) = RawClient::ready(&a.ws_url(), Codec::Json).await;
    publisher.request(join(1, "f")).await;

    presence.process.signal("STOP");
    // New connections and joins queue presence updates; messages flow.
    let (mut late, _) = RawClient::ready(&b.ws_url(), Codec::Json).await;
    late.request(join(1, "f")).await;
    for i in 0..50u64 {
        let started = Instant::now();
        let (offset, _) = publish(&mut publisher, 1000 + i).await;
        assert!(offset.is_some(), "publish failed while presence is frozen");
        let got = member
            .recv_until(|f| match f {
                ServerFrame::Message { offset, .. } => Some(*offset),
                _ => None,
            })
            .await;
        assert_eq!(Some(got), offset);
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "delivery waited {:?}",
            started.elapsed()
        );
    }
    let (_, metrics) = http_request(b.addr, "GET", "/metrics", &[], "").unwrap();
    assert!(
        metrics.contains("roomcast_presence_queue_depth"),
        "{metrics}"
    );
    presence.process.signal("CONT");
    // Presence catches up with what was queued.
    let caught_up = wait_until(Duration::from_secs(10), || {
        let (_, text) = http_request(
            b.addr,
            "GET",
            "/api/presence/f",
            &[("Authorization", "Bearer test-key")],
            "",
        )
        .unwrap();
        text.matches("\"session\"").count() >= 3
    });
    assert!(caught_up, "presence did not catch up after the freeze");
}

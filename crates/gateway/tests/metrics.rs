//! `/metrics` exposes every family operators need, and the counters move
//! for a scripted session: connect, join, publish, a slow consumer, a rate
//! limit. In a cluster, the Redis and presence families appear too, and the
//! presence service exports its own.

use std::time::Duration;

use roomcast_protocol::{ClientFrame, Codec, ServerFrame};
use roomcast_testkit::redis::RedisServer;
use roomcast_testkit::stalled::StalledClient;
use roomcast_testkit::ws::{join, RawClient};
use roomcast_testkit::{http_request, wait_until, Gateway, PresenceService};
use serde_json::json;

fn scrape(addr: std::net::SocketAddr) -> String {
    http_request(addr, "GET", "/metrics", &[], "").unwrap().1
}

fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no series {series}"))
}

const FAMILIES: [&str; 32] = [
    "roomcast_connections",
    "roomcast_connections_accepted_total",
    "roomcast_connections_rejected_total",
    "roomcast_rooms",
    "roomcast_subscriptions",
    "roomcast_frames_in_total",
    "roomcast_frames_out_total",
    "roomcast_messages_published_total",
    "roomcast_messages_delivered_total",
    "roomcast_messages_written_directly_total",
    "roomcast_publish_to_deliver_seconds",
    "roomcast_broker_publish_seconds",
    "roomcast_broker_errors_total",
    "roomcast_history_reads_total",
    "roomcast_recovery_total",
    "roomcast_resumes_total",
    "roomcast_rate_limited_total",
    "roomcast_outbound_overflows_total",
    "roomcast_disconnects_total",
    "roomcast_direct_messages_total",
    "roomcast_api_requests_total",
    "roomcast_api_unauthorized_total",
    "roomcast_draining",
    "roomcast_control_routed_total",
    "roomcast_control_received_total",
    "roomcast_proxy_calls_total",
    "roomcast_proxy_duration_seconds",
    "roomcast_config_reloads_total",
    "roomcast_heartbeat_pings_total",
    "roomcast_accept_refused_total",
    "roomcast_pending_handshakes",
    "roomcast_http_timeouts_total",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_for_a_scripted_session() {
    let gw = Gateway::start(&[
        ("ROOMCAST_LIMITS__MESSAGES_PER_SECOND", "20"),
        ("ROOMCAST_LIMITS__MESSAGE_BURST", "20"),
        ("ROOMCAST_LIMITS__RATE_LIMIT_STRIKES", "5"),
        ("ROOMCAST_LIMITS__OUTBOUND_QUEUE_FRAMES", "64"),
        ("ROOMCAST_LIMITS__OUTBOUND_QUEUE_BYTES", "65536"),
    ]);
    let before = scrape(gw.addr);
    for family in FAMILIES {
        assert!(
            before.contains(&format!("# TYPE {family} ")),
            "family {family} missing"
        );
        assert!(
            before.contains(&format!("# HELP {family} ")),
            "family {family} has no HELP"
        );
    }

    // Connect, join, publish.
    let (mut c, _) = RawClient::ready(&gw.ws_url(), Codec::Json).await;
    c.request(join(1, "m")).await;
    c.request(ClientFrame::Publish {
        id: Some(2),
        room: "m".into(),
        data: json!(1),
        key: None,
    })
    .await;
    // A slow consumer: joins, stops reading, is flooded past its queue.
    let mut slow = StalledClient::connect(
        gw.addr,
        4096,
        &[r#"{"type":"hello"}"#, r#"{"type":"join","room":"m"}"#],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let big = "x".repeat(8 * 1024);
    // More than the kernel's socket buffers can absorb (~4.8 MB).
    for i in 0..600 {
        let body = format!(r#"{{"room":"m","data":{{"i":{i},"p":"{big}"}}}}"#);
        http_request(
            gw.addr,
            "POST",
            "/api/publish",
            &[("Authorization", "Bearer test-key")],
            &body,
        )
        .unwrap();
    }
    assert_eq!(
        slow.read_until_close(Duration::from_secs(20)).await,
        Some(4508)
    );
    // A rate limit: a flood of pings on a fresh connection.
    let (mut flooder, _) = RawClient::ready(&gw.ws_url(), Codec::Json).await;
    for i in 0..40 {
        flooder.send(&ClientFrame::Ping { id: Some(i) }).await;
    }
    assert_eq!(flooder.expect_close().await, 4429);

    let moved = wait_until(Duration::from_secs(5), || {
        let after = scrape(gw.addr);
        value(&after, "roomcast_disconnects_total{code=\"4508\"}") >= 1.0
            && value(&after, "roomcast_disconnects_total{code=\"4429\"}") >= 1.0
    });
    assert!(moved, "disconnects not counted");
    let after = scrape(gw.addr);
    for (series, at_least) in [
        ("roomcast_connections_accepted_total", 3.0),
        ("roomcast_frames_in_total{type=\"join\"}", 1.0),
        ("roomcast_frames_in_total{type=\"publish\"}", 1.0),
        ("roomcast_frames_in_total{type=\"hello\"}", 3.0),
        ("roomcast_frames_out_total{type=\"message\"}", 1.0),
        ("roomcast_messages_published_total", 601.0),
        ("roomcast_messages_delivered_total", 601.0),
        ("roomcast_publish_to_deliver_seconds_count", 601.0),
        ("roomcast_broker_publish_seconds_count", 601.0),
        ("roomcast_history_reads_total", 2.0),
        ("roomcast_rate_limited_total", 5.0),
        ("roomcast_outbound_overflows_total", 1.0),
        ("roomcast_api_requests_total", 600.0),
        ("roomcast_rooms", 1.0),
    ] {
        let v = value(&after, series);
        assert!(
            v >= at_least,
            "{series} is {v}, expected at least {at_least}"
        );
    }
    drop(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_node_and_the_presence_service_export_their_families() {
    let redis = RedisServer::start();
    let presence = PresenceService::start(&redis.url(), &[]);
    let gw = Gateway::start(&[
        ("ROOMCAST_REDIS__URL", &redis.url()),
        ("ROOMCAST_PRESENCE__URL", &presence.url()),
        ("ROOMCAST_AUTH__RESUME_SECRET", "metrics-test"),
    ]);
    let (mut c, _) = RawClient::ready(&gw.ws_url(), Codec::Json).await;
    c.request(join(1, "m")).await;
    c.request(ClientFrame::Publish {
        id: Some(2),
        room: "m".into(),
        data: json!(1),
        key: None,
    })
    .await;
    let text = scrape(gw.addr);
    for family in [
        "roomcast_redis_errors_total",
        "roomcast_redis_reconnects_total",
        "roomcast_pubsub_lost_total",
        "roomcast_pubsub_gap_repaired_total",
        "roomcast_pubsub_gap_unrepaired_total",
        "roomcast_pubsub_duplicates_dropped_total",
        "roomcast_redis_history_reads_total",
        "roomcast_pubsub_rooms_unsubscribed",
        "roomcast_pubsub_node_channels_unsubscribed",
        "roomcast_pubsub_connected",
        "roomcast_pubsub_resubscribes_total",
        "roomcast_pubsub_subscription_shortfalls_total",
        "roomcast_pubsub_repair_seconds",
        "roomcast_pubsub_last_repair_seconds",
        "roomcast_pubsub_gap_repair_failures_total",
        "roomcast_presence_queue_depth",
        "roomcast_presence_reachable",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "family {family} missing:\n{text}"
        );
    }
    // The join read the room's history (and its subscription its position).
    assert!(value(&text, "roomcast_redis_history_reads_total") >= 1.0);
    // Every wanted channel is held: the room and the node's own.
    assert_eq!(value(&text, "roomcast_pubsub_rooms_unsubscribed"), 0.0);
    assert_eq!(
        value(&text, "roomcast_pubsub_node_channels_unsubscribed"),
        0.0
    );
    assert_eq!(value(&text, "roomcast_pubsub_connected"), 1.0);
    assert!(wait_until(Duration::from_secs(5), || value(
        &scrape(gw.addr),
        "roomcast_presence_reachable"
    ) == 1.0));
    let presence_text = scrape(presence.addr);
    for series in [
        "roomcast_presence_nodes",
        "roomcast_presence_sessions",
        "roomcast_presence_sync_requests_total",
        "roomcast_presence_take_requests_total",
    ] {
        assert!(
            presence_text.contains(series),
            "{series} missing:\n{presence_text}"
        );
    }
    assert!(wait_until(Duration::from_secs(5), || value(
        &scrape(presence.addr),
        "roomcast_presence_sessions"
    ) >= 1.0));
    let reply = c.request(ClientFrame::Ping { id: Some(3) }).await;
    assert_eq!(reply, ServerFrame::Pong { id: Some(3) });
}

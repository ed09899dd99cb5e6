//! One client stops reading while fifty others keep receiving: the others
//! get every message, the slow one is closed with 4508, and the node's
//! memory stays bounded.

use std::time::{Duration, Instant};

use roomcast_protocol::{ClientFrame, Codec, ServerFrame};
use roomcast_testkit::stalled::StalledClient;
use roomcast_testkit::ws::{join, RawClient};
use roomcast_testkit::{http_request, rss_kib, wait_until, Gateway};
use serde_json::json;

const FAST: usize = 50;
const MESSAGES: u64 = 2000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_closed_with_4508_while_the_others_keep_receiving() {
    let gw = Gateway::start(&[
        ("ROOMCAST_LIMITS__MESSAGES_PER_SECOND", "100000"),
        ("ROOMCAST_LIMITS__MESSAGE_BURST", "100000"),
    ]);
    let rss_before = rss_kib(gw.process.pid()).unwrap();

    let mut slow = StalledClient::connect(
        gw.addr,
        4096,
        &[r#"{"type":"hello"}"#, r#"{"type":"join","room":"flood"}"#],
    )
    .await;

    let mut readers = Vec::new();
    for _ in 0..FAST {
        let (mut c, _) = RawClient::ready(&gw.ws_url(), Codec::Json).await;
        c.request(join(1, "flood")).await;
        readers.push(tokio::spawn(async move {
            let mut next = 1;
            let started = Instant::now();
            while next <= MESSAGES {
                if let ServerFrame::Message { offset, .. } = c.recv().await {
                    assert_eq!(offset, next);
                    next += 1;
                }
            }
            started.elapsed()
        }));
    }

    let (mut publisher, _) = RawClient::ready(&gw.ws_url(), Codec::Json).await;
    publisher.request(join(1, "flood")).await;
    let payload = "x".repeat(2048);
    for i in 0..MESSAGES {
        publisher
            .send(&ClientFrame::Publish {
                id: None,
                room: "flood".into(),
                data: json!({"i": i, "p": payload}),
                key: None,
            })
            .await;
        // Paced so that readers that do read keep up, even in a debug build.
        if i % 10 == 9 {
            tokio::time::sleep(Duration::from_millis(8)).await;
        }
    }
    for r in readers {
        let took = r.await.expect("a fast reader failed");
        assert!(took < Duration::from_secs(60), "fast reader took {took:?}");
    }

    // The slow one finds its close frame after whatever the socket held.
    assert_eq!(
        slow.read_until_close(Duration::from_secs(15)).await,
        Some(4508)
    );

    let rss_after = rss_kib(gw.process.pid()).unwrap();
    // ~4 MiB of payload was published; the node must not have kept a
    // backlog for the stalled reader (its queue is bounded by 1 MiB).
    assert!(
        rss_after < rss_before + 64 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    // The node records the disconnect once its close handshake gives up.
    let counted = wait_until(Duration::from_secs(5), || {
        let (_, metrics) = http_request(gw.addr, "GET", "/metrics", &[], "").unwrap();
        metrics.contains("roomcast_outbound_overflows_total 1")
            && metrics.contains("roomcast_disconnects_total{code=\"4508\"} 1")
    });
    assert!(counted, "overflow and 4508 disconnect not counted");
}

//! Heartbeat pings written straight to the socket by the heartbeat
//! (`heartbeat.direct_ping`): they keep silent clients alive, never land in
//! the middle of a frame the connection's task is writing, and give way to
//! the ordinary path where that cannot be promised.

use std::time::Duration;

use roomcast_protocol::{Codec, ServerFrame};
use roomcast_testkit::ws::{join, Event, RawClient};
use roomcast_testkit::{publish_padded_from_a_thread, Gateway};
use yawc::Frame;

fn fast_heartbeat(direct: &str) -> Gateway {
    Gateway::start(&[
        ("ROOMCAST_HEARTBEAT__PING_INTERVAL_MS", "150"),
        ("ROOMCAST_HEARTBEAT__PONG_TIMEOUT_MS", "2000"),
        ("ROOMCAST_HEARTBEAT__DIRECT_PING", direct),
    ])
}

/// Reads for `time`, expecting no frame and no close, counting pings.
async fn stay_silent(c: &mut RawClient, time: Duration) {
    if let Some(event) = c.next_event_within(time).await {
        panic!("expected only pings, got {event:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_gets_direct_pings_and_stays_connected() {
    let gw = fast_heartbeat("true");
    let (mut c, _) = RawClient::ready(&gw.ws_url(), Codec::Json).await;
    stay_silent(&mut c, Duration::from_millis(1500)).await;
    assert!(c.pings >= 4, "only {} pings in 1.5 s", c.pings);
    let direct = gw.metric("roomcast_heartbeat_pings_total{path=\"direct\"}");
    assert!(direct >= 4, "direct pings: {direct}");
    assert_eq!(
        c.request(roomcast_protocol::ClientFrame::Ping { id: Some(7) })
            .await,
        ServerFrame::Pong { id: Some(7) }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_never_split_a_frame_of_a_busy_stream_to_a_slow_reader() {
    let gw = fast_heartbeat("true");
    let (mut reader, _) = RawClient::ready(&gw.ws_url(), Codec::Json).await;
    reader.request(join(1, "stream")).await;
    // A backend publishes messages of many sizes, some larger than the
    // socket buffers, while the reader keeps pausing: the node's writes
    // often stop half way, and pings come due all along (the reader sends
    // nothing but pongs).
    const MESSAGES: u64 = 400;
    // Up to just under `limits.max_message_bytes` (64 KiB).
    const SIZES: &[usize] = &[10, 700, 3_000, 20_000, 60_000];
    let publisher = publish_padded_from_a_thread(gw.addr, "stream", MESSAGES, SIZES);
    let mut expected = 1;
    while expected <= MESSAGES {
        match reader.next_event().await {
            Event::Frame(ServerFrame::Message { offset, data, .. }) => {
                assert_eq!(offset, expected, "out of order or lost");
                assert_eq!(data["i"], expected - 1);
                expected += 1;
                if expected % 25 == 0 {
                    tokio::time::sleep(Duration::from_millis(120)).await;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    publisher.join().unwrap();
    // A ping is outstanding until the node reads its pong, which it does
    // between writes: few pings come during the stream, but some do.
    let during = reader.pings;
    assert!(during >= 1, "no ping during the stream");
    // Silent again: pings still flow, and the connection is whole.
    stay_silent(&mut reader, Duration::from_millis(900)).await;
    assert!(reader.pings >= during + 3, "only {} pings", reader.pings);
    let direct = gw.metric("roomcast_heartbeat_pings_total{path=\"direct\"}");
    assert!(direct >= 1, "no direct ping at all");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_pings_the_node_gets_queued_pings_from_then_on() {
    let gw = fast_heartbeat("true");
    let (mut c, _) = RawClient::ready(&gw.ws_url(), Codec::Json).await;
    // Its own ping: yawc owes it a pong, written from inside a read.
    c.send_frame(Frame::ping("are you there")).await.unwrap();
    stay_silent(&mut c, Duration::from_millis(1500)).await;
    assert!(c.pings >= 4, "only {} pings", c.pings);
    assert_eq!(
        gw.metric("roomcast_heartbeat_pings_total{path=\"direct\"}"),
        0
    );
    assert!(gw.metric("roomcast_heartbeat_pings_total{path=\"queued\"}") >= 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_direct_ping_off_every_ping_is_queued() {
    let gw = fast_heartbeat("false");
    let (mut c, _) = RawClient::ready(&gw.ws_url(), Codec::Json).await;
    stay_silent(&mut c, Duration::from_millis(1500)).await;
    assert!(c.pings >= 4, "only {} pings", c.pings);
    assert_eq!(
        gw.metric("roomcast_heartbeat_pings_total{path=\"direct\"}"),
        0
    );
    assert!(gw.metric("roomcast_heartbeat_pings_total{path=\"queued\"}") >= 4);
}

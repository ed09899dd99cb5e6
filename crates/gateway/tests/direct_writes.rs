//! Room messages written straight to a member's socket by the fan-out
//! (`websocket.direct_writes`): they arrive whole and in order, mixed with
//! the ones the connection's task writes (large, compressed, queued behind
//! others), also to a reader that keeps pausing so that writes stop half
//! way; and with the setting off, none go directly.

use std::time::Duration;

use roomcast_protocol::{Codec, ServerFrame};
use roomcast_testkit::ws::{join, Event, RawClient};
use roomcast_testkit::{publish_padded_from_a_thread, Gateway};

const DIRECT: &str = "roomcast_messages_written_directly_total";
const DELIVERED: &str = "roomcast_messages_delivered_total";

/// Reads `count` messages, checking each is the next one, whole; pauses
/// `pause` every 25 messages.
async fn read_in_order(c: &mut RawClient, count: u64, sizes: &[usize], pause: Duration) {
    let mut expected = 1;
    while expected <= count {
        match c.next_event().await {
            Event::Frame(ServerFrame::Message { offset, data, .. }) => {
                assert_eq!(offset, expected, "out of order or lost");
                let i = expected - 1;
                assert_eq!(data["i"], i);
                let pad = data["pad"].as_str().expect("pad");
                assert_eq!(
                    pad.len(),
                    sizes[(i as usize) % sizes.len()],
                    "message {i} cut"
                );
                assert!(pad.bytes().all(|b| b == b'x'), "message {i} mangled");
                expected += 1;
                if expected % 25 == 0 && !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// The connection is whole after the stream: a `ping` request gets its `pong`.
async fn still_answers(c: &mut RawClient, id: u64) {
    assert_eq!(
        c.request(roomcast_protocol::ClientFrame::Ping { id: Some(id) })
            .await,
        ServerFrame::Pong { id: Some(id) }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_messages_go_straight_to_the_socket_in_order_for_both_codecs() {
    let gw = Gateway::start(&[]);
    let (mut json, _) = RawClient::ready(&gw.ws_url(), Codec::Json).await;
    let (mut packed, _) = RawClient::ready(&gw.ws_url(), Codec::MsgPack).await;
    json.request(join(1, "small")).await;
    packed.request(join(1, "small")).await;
    const SIZES: &[usize] = &[0, 10, 100, 300];
    let publisher = publish_padded_from_a_thread(gw.addr, "small", 200, SIZES);
    tokio::join!(
        read_in_order(&mut json, 200, SIZES, Duration::ZERO),
        read_in_order(&mut packed, 200, SIZES, Duration::ZERO),
    );
    publisher.join().unwrap();
    let direct = gw.metric(DIRECT);
    assert!(
        direct >= 200,
        "only {direct} of 400 deliveries went directly"
    );
    assert!(direct <= gw.metric(DELIVERED));
    // The connections are whole: requests still get their answers.
    still_answers(&mut json, 3).await;
    still_answers(&mut packed, 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pausing_reader_gets_every_frame_whole_when_direct_writes_stop_half_way() {
    // Without compression every message up to 64 KiB may go directly, so
    // large ones often fill the socket buffer part way: the task must
    // finish them before anything else it writes.
    let gw = Gateway::start(&[
        ("ROOMCAST_WEBSOCKET__COMPRESSION", "false"),
        // Uncompressed, the pauses let megabytes pile up: this test is
        // about whole frames, not about closing slow consumers.
        ("ROOMCAST_LIMITS__OUTBOUND_QUEUE_BYTES", "67108864"),
        ("ROOMCAST_HEARTBEAT__PING_INTERVAL_MS", "150"),
        ("ROOMCAST_HEARTBEAT__PONG_TIMEOUT_MS", "5000"),
    ]);
    let (mut reader, _) = RawClient::ready(&gw.ws_url(), Codec::Json).await;
    reader.request(join(1, "stream")).await;
    const SIZES: &[usize] = &[10, 700, 3_000, 20_000, 60_000, 45_000];
    const COUNT: u64 = 360;
    let publisher = publish_padded_from_a_thread(gw.addr, "stream", COUNT, SIZES);
    // Read nothing until the node has had to queue for this reader: its
    // socket is full by then, so a direct write stopped half way or gave
    // way to the task. (Pauses alone left that to timing: a slow publisher
    // let the socket buffers absorb every message.) Within the pong
    // timeout, since an unread socket answers no ping.
    let behind = roomcast_testkit::wait_until(Duration::from_secs(4), || {
        gw.metric(DELIVERED) > gw.metric(DIRECT)
    });
    assert!(
        behind,
        "the node never had to queue for a reader that read nothing"
    );
    read_in_order(&mut reader, COUNT, SIZES, Duration::from_millis(120)).await;
    publisher.join().unwrap();
    let direct = gw.metric(DIRECT);
    assert!(direct >= 1, "nothing went directly");
    assert!(
        direct < COUNT,
        "all {COUNT} went directly: the reader never fell behind"
    );
    still_answers(&mut reader, 9).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_direct_writes_off_every_message_goes_through_the_task() {
    let gw = Gateway::start(&[("ROOMCAST_WEBSOCKET__DIRECT_WRITES", "false")]);
    let (mut c, _) = RawClient::ready(&gw.ws_url(), Codec::Json).await;
    c.request(join(1, "off")).await;
    const SIZES: &[usize] = &[10, 100];
    let publisher = publish_padded_from_a_thread(gw.addr, "off", 50, SIZES);
    read_in_order(&mut c, 50, SIZES, Duration::ZERO).await;
    publisher.join().unwrap();
    assert_eq!(gw.metric(DIRECT), 0);
    assert!(gw.metric(DELIVERED) >= 50);
}

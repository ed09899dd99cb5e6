//! `roomcast-chaos`: the long fault scenarios behind `make chaos`.
//!
//! `slow-consumers`: one node, 50 readers and a publisher stamping each
//! message with its send time. The readers' publish-to-receive p99 is
//! measured twice: alone, then while 1,000 more members of the same room
//! stop reading. Passes when every stalled client is closed with 4508, the
//! node's RSS stays bounded, and the readers' p99 stays within 2x of the
//! baseline (plus 5 ms of slack for a 2-core machine). Loopback only; it
//! stops by itself.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use roomcast_protocol::{Codec, ServerFrame};
use roomcast_testkit::stalled::StalledClient;
use roomcast_testkit::ws::{join, RawClient};
use roomcast_testkit::{http_request, rss_kib, Gateway};

const READERS: usize = 50;
const STALLED: usize = 1000;
const RATE: u64 = 200; // messages per second
const SECONDS: u64 = 10;

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn p99(mut v: Vec<u64>) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

/// Publishes RATE messages a second for SECONDS; returns the readers'
/// latencies in microseconds.
async fn measure(gw: &Gateway, readers: &mut Vec<RawClient>) -> Vec<u64> {
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let total = RATE * SECONDS;
    let mut tasks = Vec::new();
    for mut r in readers.drain(..) {
        let latencies = latencies.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = 0;
            while got < total {
                match r.next_event_within(Duration::from_secs(20)).await {
                    Some(roomcast_testkit::ws::Event::Frame(ServerFrame::Message {
                        data, ..
                    })) => {
                        if let Some(sent) = data["t"].as_u64() {
                            latencies
                                .lock()
                                .unwrap()
                                .push(now_us().saturating_sub(sent));
                        }
                        got += 1;
                    }
                    Some(roomcast_testkit::ws::Event::Frame(_)) => {}
                    other => panic!("a reader stopped: {other:?}"),
                }
            }
            r
        }));
    }
    // The publisher uses the HTTP API from its own thread, at a fixed rate.
    let addr = gw.addr;
    let publisher = std::thread::spawn(move || {
        let pad = "x".repeat(1024);
        let every = Duration::from_micros(1_000_000 / RATE);
        let mut next = Instant::now();
        for _ in 0..total {
            let body = format!(
                r#"{{"room":"chaos","data":{{"t":{},"p":"{pad}"}}}}"#,
                now_us()
            );
            let _ = http_request(
                addr,
                "POST",
                "/api/publish",
                &[("Authorization", "Bearer test-key")],
                &body,
            );
            next += every;
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
    });
    let _ = tokio::task::spawn_blocking(move || publisher.join()).await;
    for t in tasks {
        readers.push(t.await.expect("reader"));
    }
    let v = latencies.lock().unwrap().clone();
    v
}

async fn slow_consumers() -> bool {
    let gw = Gateway::start(&[
        ("ROOMCAST_LIMITS__MESSAGES_PER_SECOND", "100000"),
        ("ROOMCAST_LIMITS__MESSAGE_BURST", "100000"),
        ("ROOMCAST_LIMITS__OUTBOUND_QUEUE_BYTES", "262144"),
        ("ROOMCAST_LIMITS__MAX_CONNECTIONS_PER_IP", "5000"),
        ("ROOMCAST_LOG__LEVEL", "warn,roomcast_gateway=info"),
    ]);
    let mut readers = Vec::new();
    for _ in 0..READERS {
        let (mut c, _) = RawClient::ready(&gw.ws_url(), Codec::Json).await;
        c.request(join(1, "chaos")).await;
        readers.push(c);
    }
    let baseline = p99(measure(&gw, &mut readers).await);
    let rss_before = rss_kib(gw.process.pid()).unwrap_or(0);

    let mut stalled = Vec::new();
    for _ in 0..STALLED {
        stalled.push(
            StalledClient::connect(
                gw.addr,
                4096,
                &[r#"{"type":"hello"}"#, r#"{"type":"join","room":"chaos"}"#],
            )
            .await,
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = measure(&gw, &mut readers).await;
    let loaded = p99(during);
    let rss_peak = rss_kib(gw.process.pid()).unwrap_or(0);
    let mut closed_4508 = 0;
    for mut s in stalled {
        if s.read_until_close(Duration::from_secs(20)).await == Some(4508) {
            closed_4508 += 1;
        }
    }
    let (_, metrics) = http_request(gw.addr, "GET", "/metrics", &[], "").unwrap_or_default();
    let overflows = metrics
        .lines()
        .find(|l| l.starts_with("roomcast_outbound_overflows_total "))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let rss_growth_mib = rss_peak.saturating_sub(rss_before) as f64 / 1024.0;
    let ok_p99 = loaded <= baseline * 2 + 5_000;
    let ok_closed = closed_4508 == STALLED;
    // Bounded: each stalled member may hold at most its 256 KiB queue.
    let ok_rss = rss_growth_mib < (STALLED as f64 * 0.25) + 64.0;
    println!("| scenario | value |\n|---|---|");
    println!("| readers | {READERS} |\n| stalled members | {STALLED} |\n| rate | {RATE} msg/s x {SECONDS} s, 1 KiB |");
    println!(
        "| readers' p99 alone | {:.2} ms |",
        baseline as f64 / 1000.0
    );
    println!(
        "| readers' p99 with {STALLED} stalled | {:.2} ms |",
        loaded as f64 / 1000.0
    );
    println!(
        "| stalled closed with 4508 | {closed_4508} / {STALLED} (overflows counted: {overflows}) |"
    );
    println!("| node RSS growth at peak | {rss_growth_mib:.1} MiB |");
    println!(
        "| result | {} |",
        if ok_p99 && ok_closed && ok_rss {
            "pass"
        } else {
            "FAIL"
        }
    );
    ok_p99 && ok_closed && ok_rss
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let scenario = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "slow-consumers".into());
    let ok = match scenario.as_str() {
        "slow-consumers" => slow_consumers().await,
        other => {
            eprintln!("unknown scenario {other}; known: slow-consumers");
            false
        }
    };
    std::process::exit(if ok { 0 } else { 1 });
}

//! The HTTP layer in front of the WebSocket upgrade and the API, attacked
//! over real sockets: stalled request heads (slowloris), slow bodies, idle
//! keep-alive connections, oversized heads, and more sockets from one
//! address than it may hold; a slow but steady client is still served.
//!
//! Sockets of the attacks come from 127.0.0.1; the well-behaved client
//! from 127.0.0.2 and the test's own metric reads from 127.0.0.3 (all of
//! 127.0.0.0/8 is loopback on Linux), so the per-address limit sees three
//! clients.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use roomcast_protocol::{Codec, ServerFrame};
use roomcast_testkit::ws::{join, publish, RawClient};
use roomcast_testkit::{http_request_from, rss_kib, Gateway};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const ATTACKER: [u8; 4] = [127, 0, 0, 1];
const CLIENT: [u8; 4] = [127, 0, 0, 2];
const OBSERVER: [u8; 4] = [127, 0, 0, 3];
const HALF_REQUEST: &[u8] = b"GET /ws HTTP/1.1\r\nHost: x\r\n";

fn ip(a: [u8; 4]) -> IpAddr {
    IpAddr::from(a)
}

/// The value of one series of the node's `/metrics`, read from 127.0.0.3.
async fn metric(gw: &Gateway, series: &str) -> f64 {
    let (status, text) = http_request_from(ip(OBSERVER), gw.addr, "GET", "/metrics", &[], "")
        .await
        .expect("GET /metrics");
    assert_eq!(status, 200);
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in\n{text}"))
}

async fn connect_from(local: [u8; 4], addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(ip(local), 0))?;
    socket.connect(addr).await
}

/// Waits up to `limit` for the peer to close (EOF or reset); the time it
/// took, or `None` if the socket was still open.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at((start + limit).into(), stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// Reads one HTTP/1.1 response with a `Content-Length` body; its status.
async fn read_response(stream: &mut TcpStream) -> u16 {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("response in time")
            .expect("read");
        assert!(n > 0, "closed before a whole response: {raw:?}");
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if body.len() >= length {
                return head.split(' ').nth(1).unwrap().parse().unwrap();
            }
        }
    }
}

/// A client of its own address that connects, says hello, joins, publishes
/// and gets its message back; how long that took.
async fn one_round(url: &str, round: u64) -> Result<Duration, String> {
    let start = Instant::now();
    let mut c = RawClient::connect_from(url, Codec::Json, ip(CLIENT)).await?;
    c.hello(None).await;
    match c.request(join(1, "slowloris:bystander")).await {
        ServerFrame::Joined { .. } => {}
        other => return Err(format!("join: {other:?}")),
    }
    // The ack and the member's own copy of the message, in either order.
    c.send(&publish(
        2,
        "slowloris:bystander",
        json!({ "round": round }),
    ))
    .await;
    let (mut acked, mut delivered) = (false, false);
    while !(acked && delivered) {
        match c.recv().await {
            ServerFrame::Ack { id: 2, .. } => acked = true,
            ServerFrame::Message { data, .. } if data == json!({ "round": round }) => {
                delivered = true
            }
            ServerFrame::Error { message, .. } => return Err(format!("publish: {message}")),
            _ => {}
        }
    }
    Ok(start.elapsed())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_heads_are_closed_by_the_header_timeout_and_capped_per_address() {
    const STALLED: usize = 2_500;
    const PER_IP: usize = 2_000;
    const HEADER: Duration = Duration::from_secs(2);
    let gw = Gateway::start(&[
        ("ROOMCAST_HTTP__HEADER_READ_TIMEOUT_MS", "2000"),
        ("ROOMCAST_LIMITS__MAX_CONNECTIONS_PER_IP", "2000"),
        ("ROOMCAST_LOG__LEVEL", "info"),
    ]);
    let pid = gw.process.pid();
    let url = gw.ws_url();
    one_round(&url, 0)
        .await
        .expect("a client before the attack");
    let rss_before = rss_kib(pid).unwrap();

    // A client of another address, round after round, all through the attack.
    let attacking = Arc::new(AtomicBool::new(true));
    let peak_rss = Arc::new(AtomicU64::new(rss_before));
    let bystander = {
        let (attacking, peak_rss, url) = (attacking.clone(), peak_rss.clone(), url.clone());
        tokio::spawn(async move {
            let mut rounds = Vec::new();
            let mut round = 1;
            while attacking.load(Ordering::Relaxed) {
                let took = one_round(&url, round)
                    .await
                    .unwrap_or_else(|e| panic!("round {round} from 127.0.0.2 failed: {e}"));
                rounds.push(took);
                if let Some(rss) = rss_kib(pid) {
                    peak_rss.fetch_max(rss, Ordering::Relaxed);
                }
                round += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            rounds
        })
    };

    // The attack: every socket sends half a request head, then nothing;
    // each one's wait for its close starts at once.
    let attack_start = Instant::now();
    let mut waits = Vec::with_capacity(STALLED);
    for _ in 0..STALLED {
        let connected = Instant::now();
        let mut s = connect_from(ATTACKER, gw.addr).await.expect("connect");
        waits.push(tokio::spawn(async move {
            // A refused socket may already be closed: the write may fail.
            let _ = s.write_all(HALF_REQUEST).await;
            closed_within(&mut s, HEADER + Duration::from_secs(6))
                .await
                .map(|_| connected.elapsed())
        }));
    }
    let opened_in = attack_start.elapsed();
    // While every slot of the address is taken: the node's memory.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = metric(&gw, "roomcast_pending_handshakes").await;
    let rss_held = rss_kib(pid).unwrap();
    peak_rss.fetch_max(rss_held, Ordering::Relaxed);

    let mut refused = Vec::new();
    let mut timed_out = Vec::new();
    let mut still_open = 0;
    for wait in waits {
        match wait.await.unwrap() {
            // Closed long before a header timeout could have fired.
            Some(t) if t < HEADER / 2 => refused.push(t),
            Some(t) => timed_out.push(t),
            None => still_open += 1,
        }
    }
    attacking.store(false, Ordering::Relaxed);
    let rounds = bystander.await.unwrap();
    refused.sort();
    timed_out.sort();

    let accepted = STALLED - refused.len();
    let in_time = timed_out
        .iter()
        .filter(|t| **t <= HEADER + Duration::from_secs(2))
        .count();
    let fraction = in_time as f64 / accepted as f64;
    let rss_peak = peak_rss.load(Ordering::Relaxed);
    let per_ip_refusals = metric(&gw, "roomcast_accept_refused_total{reason=\"per_ip\"}").await;
    let header_timeouts = metric(&gw, "roomcast_http_timeouts_total{kind=\"header\"}").await;
    println!(
        "{STALLED} stalled heads opened in {opened_in:?}; {held} pending at once; \
         refused at accept: {} (slowest {:?}); closed by the header timeout ({HEADER:?}): \
         {}/{accepted} = {:.1} % within {:?} (p50 {:?}, p95 {:?}, max {:?}); still open: {still_open}; \
         node RSS {rss_before} KiB before, {rss_held} KiB holding them, peak {rss_peak} KiB; \
         bystander rounds from 127.0.0.2: {} (slowest {:?})",
        refused.len(),
        refused.last(),
        in_time,
        fraction * 100.0,
        HEADER + Duration::from_secs(2),
        percentile(&timed_out, 0.5),
        percentile(&timed_out, 0.95),
        timed_out.last().unwrap(),
        rounds.len(),
        rounds.iter().max(),
    );

    assert!(opened_in < HEADER, "the attack took {opened_in:?} to open");
    // One address never held more than its limit (the bystander's own
    // upgrade may be waiting for its head too).
    assert!(accepted <= PER_IP, "{accepted} accepted");
    assert!(
        (PER_IP as f64..=PER_IP as f64 + 1.0).contains(&held),
        "{held}"
    );
    assert_eq!(per_ip_refusals, refused.len() as f64);
    assert!(fraction >= 0.95, "{fraction}");
    assert!(
        timed_out[0] >= HEADER - Duration::from_millis(100),
        "closed before the header timeout: {:?}",
        timed_out[0]
    );
    assert!(header_timeouts >= in_time as f64);
    assert!(rounds.len() >= 5, "{} rounds", rounds.len());
    // About 15 KiB a stalled socket (hyper's 8 KiB read and write buffers,
    // the task): bounded by the count of sockets, which is bounded.
    assert!(
        rss_peak - rss_before < (PER_IP as u64 * 24),
        "RSS grew by {} KiB",
        rss_peak - rss_before
    );
    // Every slot and pending count was given back.
    assert_eq!(metric(&gw, "roomcast_pending_handshakes").await, 0.0);
    let burst: Vec<_> = (0..PER_IP.min(100))
        .map(|_| connect_from(ATTACKER, gw.addr))
        .collect();
    for s in burst {
        let mut s = s.await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_response(&mut s).await, 200);
    }
    one_round(&url, 1_000_000)
        .await
        .expect("a client after the attack");
}

#[tokio::test]
async fn sockets_waiting_for_their_head_are_capped_on_the_whole_node() {
    let gw = Gateway::start(&[
        ("ROOMCAST_HTTP__HEADER_READ_TIMEOUT_MS", "3000"),
        ("ROOMCAST_LIMITS__MAX_PENDING_HANDSHAKES", "100"),
        ("ROOMCAST_LIMITS__MAX_CONNECTIONS_PER_IP", "0"),
    ]);
    let mut sockets = Vec::new();
    for _ in 0..150 {
        let mut s = connect_from(ATTACKER, gw.addr).await.unwrap();
        let _ = s.write_all(HALF_REQUEST).await;
        sockets.push(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut refused = 0;
    for s in &mut sockets {
        if closed_within(s, Duration::from_millis(1)).await.is_some() {
            refused += 1;
        }
    }
    assert_eq!(refused, 50);
    // Past the header timeout the cap is free again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(metric(&gw, "roomcast_pending_handshakes").await, 0.0);
    assert_eq!(
        metric(&gw, "roomcast_accept_refused_total{reason=\"pending\"}").await,
        50.0
    );
    assert!(metric(&gw, "roomcast_http_timeouts_total{kind=\"header\"}").await >= 100.0);
}

#[tokio::test]
async fn slow_bodies_are_closed_by_the_body_timeout() {
    const BODY: Duration = Duration::from_secs(2);
    let gw = Gateway::start(&[("ROOMCAST_HTTP__BODY_TIMEOUT_MS", "2000")]);
    let mut waits = Vec::new();
    for _ in 0..20 {
        let mut s = connect_from(ATTACKER, gw.addr).await.unwrap();
        s.write_all(
            b"POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer test-key\r\n\
              Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"room\":",
        )
        .await
        .unwrap();
        waits.push(tokio::spawn(async move {
            closed_within(&mut s, BODY + Duration::from_secs(5)).await
        }));
    }
    let mut times = Vec::new();
    for wait in waits {
        times.push(wait.await.unwrap().expect("a slow body still open"));
    }
    times.sort();
    println!(
        "slow bodies closed after {:?} to {:?} (body timeout {BODY:?})",
        times[0],
        times.last().unwrap()
    );
    assert!(times[0] >= BODY - Duration::from_millis(100), "{times:?}");
    assert!(
        *times.last().unwrap() <= BODY + Duration::from_secs(1),
        "{times:?}"
    );
    assert_eq!(
        metric(&gw, "roomcast_http_timeouts_total{kind=\"body\"}").await,
        20.0
    );
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed_by_the_idle_timeout() {
    // Longer than the header timeout: the wait for a next request is not a
    // head being read.
    const IDLE: Duration = Duration::from_secs(3);
    let gw = Gateway::start(&[
        ("ROOMCAST_HTTP__IDLE_TIMEOUT_MS", "3000"),
        ("ROOMCAST_HTTP__HEADER_READ_TIMEOUT_MS", "1000"),
    ]);
    let mut waits = Vec::new();
    for _ in 0..20 {
        let mut s = connect_from(ATTACKER, gw.addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_response(&mut s).await, 200);
        waits.push(tokio::spawn(async move {
            closed_within(&mut s, IDLE + Duration::from_secs(5)).await
        }));
    }
    let mut times = Vec::new();
    for wait in waits {
        times.push(wait.await.unwrap().expect("an idle connection still open"));
    }
    times.sort();
    println!(
        "idle keep-alive connections closed after {:?} to {:?} (idle timeout {IDLE:?})",
        times[0],
        times.last().unwrap()
    );
    assert!(times[0] >= IDLE - Duration::from_millis(100), "{times:?}");
    assert!(
        *times.last().unwrap() <= IDLE + Duration::from_secs(1),
        "{times:?}"
    );
    assert_eq!(
        metric(&gw, "roomcast_http_timeouts_total{kind=\"idle\"}").await,
        20.0
    );
}

/// Writes `bytes` in `pieces` parts, `gap` apart.
async fn trickle(s: &mut TcpStream, bytes: &[u8], pieces: usize, gap: Duration) {
    for (i, part) in bytes.chunks(bytes.len().div_ceil(pieces)).enumerate() {
        if i > 0 {
            tokio::time::sleep(gap).await;
        }
        s.write_all(part).await.unwrap();
    }
}

#[tokio::test]
async fn a_slow_but_steady_client_is_served() {
    let gw = Gateway::start(&[
        ("ROOMCAST_HTTP__HEADER_READ_TIMEOUT_MS", "2000"),
        ("ROOMCAST_HTTP__BODY_TIMEOUT_MS", "2000"),
        ("ROOMCAST_HTTP__IDLE_TIMEOUT_MS", "4000"),
    ]);
    let gap = Duration::from_millis(300);
    let mut s = connect_from(CLIENT, gw.addr).await.unwrap();
    // A member to see the message arrive.
    let (mut member, _) = RawClient::ready(&gw.ws_url(), Codec::Json).await;
    member.request(join(1, "slow:room")).await;

    let body = br#"{"room":"slow:room","data":{"slow":true}}"#;
    let head = format!(
        "POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer test-key\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let start = Instant::now();
    // The head in 5 pieces (1.2 s, within 2 s), the body in 4 (0.9 s).
    trickle(&mut s, head.as_bytes(), 5, gap).await;
    tokio::time::sleep(gap).await;
    trickle(&mut s, body, 4, gap).await;
    assert_eq!(read_response(&mut s).await, 200);
    let (data, _) = member.next_message("slow:").await;
    assert_eq!(data, json!({"slow": true}));
    println!("slow publish served in {:?}", start.elapsed());

    // Idle for longer than the header timeout (but not the idle one), then
    // a second request on the same connection, slowly again.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    trickle(
        &mut s,
        b"GET /api/stats HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer test-key\r\n\r\n",
        5,
        gap,
    )
    .await;
    assert_eq!(read_response(&mut s).await, 200);

    // A WebSocket upgrade sent just as slowly works too.
    let mut ws = connect_from(CLIENT, gw.addr).await.unwrap();
    trickle(
        &mut ws,
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: cm9vbWNhc3QtdGVzdC1rZXk=\r\nSec-WebSocket-Version: 13\r\n\
          Sec-WebSocket-Protocol: roomcast.v1.json\r\n\r\n",
        6,
        gap,
    )
    .await;
    let mut buf = [0u8; 512];
    let n = ws.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
}

#[tokio::test]
async fn a_head_over_the_size_cap_is_answered_431() {
    let gw = Gateway::start(&[]);
    for (cookie, status) in [(20 * 1024, 200), (40 * 1024, 431)] {
        let mut s = connect_from(CLIENT, gw.addr).await.unwrap();
        let head = format!(
            "GET /healthz HTTP/1.1\r\nHost: x\r\nCookie: c={}\r\n\r\n",
            "x".repeat(cookie)
        );
        s.write_all(head.as_bytes()).await.unwrap();
        assert_eq!(read_response(&mut s).await, status, "{cookie} bytes");
    }
}

#[tokio::test]
async fn a_stalled_head_does_not_hold_up_a_shutdown() {
    let mut gw = Gateway::start(&[
        ("ROOMCAST_DRAIN__WINDOW_MS", "100"),
        ("ROOMCAST_DRAIN__TIMEOUT_MS", "20000"),
    ]);
    let mut stalled = connect_from(ATTACKER, gw.addr).await.unwrap();
    stalled.write_all(HALF_REQUEST).await.unwrap();
    let mut idle = connect_from(ATTACKER, gw.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut idle).await, 200);
    let start = Instant::now();
    gw.process.signal("TERM");
    // Well before the 10 s header timeout and the 60 s idle timeout.
    let code = gw.process.wait_exit(Duration::from_secs(3));
    assert_eq!(
        code,
        Some(Some(0)),
        "not gone {:?} after SIGTERM",
        start.elapsed()
    );
    assert!(closed_within(&mut stalled, Duration::from_secs(1))
        .await
        .is_some());
}

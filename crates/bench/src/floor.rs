//! `floor`: what this machine's kernel alone charges for the two things the
//! missed targets of issue #8 are made of, measured with nothing above the
//! sockets (no WebSocket, no runtime, no gateway, no JSON):
//!
//! - **fan-out**: one thread writes a `msg_bytes` message to each of `conns`
//!   loopback TCP connections, as a node's fan-out does, and another thread
//!   reads them with epoll, as the load generator does. Reported: the
//!   writer's CPU per write (the loopback receive path runs inside the
//!   writer's `send`), the reader's CPU per message, and the drain time of
//!   one fan-out (first write until the last byte is read), over `rounds`
//!   rounds;
//! - **heartbeat**: a server thread sends 2-byte pings in batches, one batch
//!   per heartbeat tick like the gateway's shard tickers, and reads the
//!   2-byte pongs an echo thread writes back. Reported: the server thread's
//!   CPU per ping and pong, which scaled to the idle scenario's connections
//!   and ping interval is the least CPU its heartbeats can cost here.
//!
//! The gateway cannot do better than these figures on the same machine; the
//! report sets targets 1 and 4 beside them. Loopback only, bounded in count
//! and time (every wait has a deadline).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::args::Args;

/// Longest any one wait of the measurement may take before it fails.
const DEADLINE: Duration = Duration::from_secs(20);

#[derive(Clone, Debug, Serialize)]
pub struct FloorConfig {
    /// Connections written to in each fan-out round.
    pub conns: usize,
    pub rounds: usize,
    pub msg_bytes: usize,
    /// Pause between fan-out rounds, so each starts from quiet sockets.
    pub gap_ms: u64,
    /// Connections pinged, each once per tick.
    pub ping_conns: usize,
    /// Heartbeat ticks (batches of `ping_conns` pings).
    pub ping_ticks: usize,
    pub tick_ms: u64,
}

impl FloorConfig {
    /// Flags fall back to `BENCH_FLOOR_*`. The defaults mirror the cross
    /// scenario (rooms of 1,000 on one node, 100-byte payloads, about 150
    /// bytes on the wire) and the gateway's heartbeat (a batch per 2 s tick:
    /// 18,000 connections every 25 s make 1,440 pings a tick).
    pub fn from_args(args: &Args) -> Result<FloorConfig> {
        let e = |k: &str| format!("BENCH_FLOOR_{k}");
        let config = FloorConfig {
            conns: args.num("conns", &e("CONNS"), 1000)?,
            rounds: args.num("rounds", &e("ROUNDS"), 200)?,
            msg_bytes: args.num("msg-bytes", &e("MSG_BYTES"), 150)?,
            gap_ms: args.num("gap-ms", &e("GAP_MS"), 5)?,
            ping_conns: args.num("ping-conns", &e("PING_CONNS"), 1440)?,
            ping_ticks: args.num("ping-ticks", &e("PING_TICKS"), 4)?,
            tick_ms: args.num("tick-ms", &e("TICK_MS"), 2000)?,
        };
        if config.conns == 0 || config.rounds == 0 || config.msg_bytes == 0 {
            bail!("floor: --conns, --rounds and --msg-bytes must be at least 1");
        }
        if config.conns.max(config.ping_conns) > 5000 {
            bail!("floor: at most 5,000 connections (two descriptors each, one process)");
        }
        Ok(config)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct FloorResult {
    pub config: FloorConfig,
    /// Writer CPU per message written, µs.
    pub send_us: f64,
    /// Reader CPU per message read, µs.
    pub recv_us: f64,
    /// Drain time of one fan-out, ms.
    pub drain_p50_ms: f64,
    pub drain_p99_ms: f64,
    pub drain_max_ms: f64,
    /// Server thread CPU per ping sent and pong read, µs.
    pub pingpong_us: f64,
}

impl FloorResult {
    /// The least CPU, as % of one core, that heartbeats of `conns`
    /// connections every `interval_secs` cost at this machine's kernel price.
    pub fn heartbeat_pct(&self, conns: f64, interval_secs: f64) -> f64 {
        conns / interval_secs * self.pingpong_us / 1e4
    }
}

/// Runs both measurements.
pub fn run(config: &FloorConfig) -> Result<FloorResult> {
    // Two descriptors a connection; many machines start processes at 1,024.
    roomcast_service::raise_open_files_limit();
    let fan = fanout(config).context("fan-out floor")?;
    let pingpong_us = heartbeat(config).context("heartbeat floor")?;
    Ok(FloorResult {
        config: config.clone(),
        send_us: fan.send_us,
        recv_us: fan.recv_us,
        drain_p50_ms: fan.drains_ms.percentile(50.0),
        drain_p99_ms: fan.drains_ms.percentile(99.0),
        drain_max_ms: fan.drains_ms.percentile(100.0),
        pingpong_us,
    })
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// `n` connected pairs over loopback: (accepted side, connecting side).
fn pairs(n: usize) -> Result<(Vec<TcpStream>, Vec<TcpStream>)> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let addr: SocketAddr = listener.local_addr()?;
    let mut servers = Vec::with_capacity(n);
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        let client = TcpStream::connect(addr)?;
        let (server, _) = listener.accept()?;
        // As the gateway does for every accepted socket.
        server.set_nodelay(true)?;
        clients.push(client);
        servers.push(server);
    }
    Ok((servers, clients))
}

/// An epoll set over `streams` (set non-blocking), each registered with its
/// index as data.
struct Poller {
    fd: i32,
}

impl Poller {
    fn new(streams: &[TcpStream]) -> Result<Poller> {
        // SAFETY: plain system call; the result is checked.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("epoll_create1");
        }
        let poller = Poller { fd };
        for (i, s) in streams.iter().enumerate() {
            s.set_nonblocking(true)?;
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: i as u64,
            };
            // SAFETY: both descriptors are open; `ev` outlives the call.
            let rc = unsafe { libc::epoll_ctl(fd, libc::EPOLL_CTL_ADD, s.as_raw_fd(), &mut ev) };
            if rc != 0 {
                return Err(std::io::Error::last_os_error()).context("epoll_ctl");
            }
        }
        Ok(poller)
    }

    /// Waits up to `timeout` for readable streams; their indexes go to `ready`.
    fn wait(&self, events: &mut [libc::epoll_event], timeout: Duration, ready: &mut Vec<usize>) {
        ready.clear();
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: `events` is a valid buffer of the length passed.
        let n = unsafe { libc::epoll_wait(self.fd, events.as_mut_ptr(), events.len() as i32, ms) };
        for ev in events.iter().take(n.max(0) as usize) {
            ready.push(ev.u64 as usize);
        }
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        // SAFETY: the descriptor is ours and closed once.
        unsafe { libc::close(self.fd) };
    }
}

fn events_buffer() -> Vec<libc::epoll_event> {
    vec![libc::epoll_event { events: 0, u64: 0 }; 256]
}

/// Drain times, sorted once.
struct Samples(Vec<f64>);

impl Samples {
    fn new(mut v: Vec<f64>) -> Samples {
        v.sort_by(f64::total_cmp);
        Samples(v)
    }

    fn percentile(&self, p: f64) -> f64 {
        let v = &self.0;
        if v.is_empty() {
            return 0.0;
        }
        let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
        v[i.min(v.len() - 1)]
    }
}

/// One non-blocking read of a ready stream: `Some(n)` bytes (0: the peer
/// closed), `None` when nothing was there after all.
fn read_ready(stream: &mut TcpStream, buf: &mut [u8]) -> Result<Option<usize>> {
    match stream.read(buf) {
        Ok(n) => Ok(Some(n)),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(e.into()),
    }
}

struct Fanout {
    send_us: f64,
    recv_us: f64,
    drains_ms: Samples,
}

fn fanout(config: &FloorConfig) -> Result<Fanout> {
    let (mut servers, clients) = pairs(config.conns)?;
    let per_round = (config.conns * config.msg_bytes) as u64;
    let total = per_round * config.rounds as u64;
    let stop = Arc::new(AtomicBool::new(false));
    let (done_tx, done_rx) = mpsc::channel::<Instant>();
    let reader = {
        let stop = stop.clone();
        let msg_bytes = config.msg_bytes as u64;
        std::thread::spawn(move || -> Result<(Duration, u64)> {
            let mut clients = clients;
            let poller = Poller::new(&clients)?;
            let mut events = events_buffer();
            let mut ready = Vec::new();
            let mut buf = [0u8; 4096];
            let mut got = 0u64;
            let cpu0 = thread_cpu();
            while got < total && !stop.load(Ordering::Relaxed) {
                poller.wait(&mut events, Duration::from_millis(100), &mut ready);
                for &i in &ready {
                    match read_ready(&mut clients[i], &mut buf)? {
                        Some(0) => bail!("a connection closed"),
                        Some(n) => {
                            let before = got / per_round;
                            got += n as u64;
                            if got / per_round > before {
                                let _ = done_tx.send(Instant::now());
                            }
                        }
                        None => {}
                    }
                }
            }
            Ok((thread_cpu() - cpu0, got / msg_bytes))
        })
    };
    let msg = vec![b'x'; config.msg_bytes];
    let mut send_cpu = Duration::ZERO;
    let mut drains = Vec::with_capacity(config.rounds);
    let outcome = (|| -> Result<()> {
        for _ in 0..config.rounds {
            let started = Instant::now();
            let cpu0 = thread_cpu();
            for s in servers.iter_mut() {
                s.write_all(&msg)?;
            }
            send_cpu += thread_cpu() - cpu0;
            let done = done_rx
                .recv_timeout(DEADLINE)
                .context("the reader did not get a round's messages in time")?;
            drains.push(done.saturating_duration_since(started).as_secs_f64() * 1e3);
            std::thread::sleep(Duration::from_millis(config.gap_ms));
        }
        Ok(())
    })();
    stop.store(true, Ordering::Relaxed);
    let (recv_cpu, messages) = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))??;
    outcome?;
    let writes = (config.conns * config.rounds) as f64;
    Ok(Fanout {
        send_us: send_cpu.as_secs_f64() * 1e6 / writes,
        recv_us: recv_cpu.as_secs_f64() * 1e6 / (messages.max(1) as f64),
        drains_ms: Samples::new(drains),
    })
}

/// Server thread CPU per ping and pong, µs.
fn heartbeat(config: &FloorConfig) -> Result<f64> {
    const PING: [u8; 2] = [0x89, 0x00];
    if config.ping_conns == 0 || config.ping_ticks == 0 {
        return Ok(0.0);
    }
    let (mut servers, clients) = pairs(config.ping_conns)?;
    let stop = Arc::new(AtomicBool::new(false));
    let echo = {
        let stop = stop.clone();
        std::thread::spawn(move || -> Result<()> {
            let mut clients = clients;
            let poller = Poller::new(&clients)?;
            let mut events = events_buffer();
            let mut ready = Vec::new();
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                poller.wait(&mut events, Duration::from_millis(50), &mut ready);
                for &i in &ready {
                    match read_ready(&mut clients[i], &mut buf)? {
                        // The server side is dropped once the pongs are in.
                        Some(0) => return Ok(()),
                        Some(n) => clients[i].write_all(&buf[..n])?,
                        None => {}
                    }
                }
            }
            Ok(())
        })
    };
    let outcome = (|| -> Result<f64> {
        let poller = Poller::new(&servers)?;
        let mut events = events_buffer();
        let mut ready = Vec::new();
        let mut buf = [0u8; 64];
        let tick = Duration::from_millis(config.tick_ms);
        let expected = (config.ping_conns * config.ping_ticks * PING.len()) as u64;
        let mut got = 0u64;
        let mut cpu = Duration::ZERO;
        let started = Instant::now();
        let mut next_tick = started;
        let mut ticks = 0;
        while got < expected {
            if started.elapsed() > DEADLINE + tick * config.ping_ticks as u32 {
                bail!("pongs missing: {got} of {expected} bytes back");
            }
            let now = Instant::now();
            let cpu0 = thread_cpu();
            if ticks < config.ping_ticks && now >= next_tick {
                for s in servers.iter_mut() {
                    s.write_all(&PING)?;
                }
                ticks += 1;
                next_tick += tick;
            }
            let wait = if ticks < config.ping_ticks {
                next_tick.saturating_duration_since(Instant::now())
            } else {
                Duration::from_millis(50)
            };
            poller.wait(&mut events, wait, &mut ready);
            for &i in &ready {
                match read_ready(&mut servers[i], &mut buf)? {
                    Some(0) => bail!("a connection closed"),
                    Some(n) => got += n as u64,
                    None => {}
                }
            }
            cpu += thread_cpu() - cpu0;
        }
        Ok(cpu.as_secs_f64() * 1e6 / (config.ping_conns * config.ping_ticks) as f64)
    })();
    stop.store(true, Ordering::Relaxed);
    drop(servers);
    echo.join()
        .map_err(|_| anyhow::anyhow!("echo thread panicked"))??;
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_floor_run_measures_every_figure() {
        let config = FloorConfig {
            conns: 50,
            rounds: 5,
            msg_bytes: 150,
            gap_ms: 1,
            ping_conns: 40,
            ping_ticks: 2,
            tick_ms: 20,
        };
        let r = run(&config).unwrap();
        assert!(
            r.send_us > 0.0 && r.recv_us > 0.0 && r.pingpong_us > 0.0,
            "{r:?}"
        );
        assert!(r.drain_p50_ms > 0.0 && r.drain_p50_ms <= r.drain_p99_ms);
        assert!(r.drain_p99_ms <= r.drain_max_ms);
        // 18,000 connections every 25 s: 720 pings a second.
        let pct = r.heartbeat_pct(18_000.0, 25.0);
        assert!((pct - 720.0 * r.pingpong_us / 1e4).abs() < 1e-9);
    }

    #[test]
    fn percentiles_of_samples() {
        let s = Samples::new((1..=100).rev().map(f64::from).collect());
        assert_eq!(s.percentile(50.0), 51.0);
        assert_eq!(s.percentile(99.0), 99.0);
        assert_eq!(s.percentile(100.0), 100.0);
        assert_eq!(Samples::new(Vec::new()).percentile(99.0), 0.0);
    }
}

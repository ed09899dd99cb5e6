//! `echo` and `fanout`: messages per second through the server, and the
//! server's CPU time per message, over a measurement window.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{anyhow, Context, Result};
use futures::SinkExt;
use roomcast_bench::args::{Args, NO_ENV};
use roomcast_bench::net::probe_deflate;
use roomcast_bench::system::{cpu_secs, load_average};
use tokio::{
    task::JoinHandle,
    time::{sleep, timeout},
};
use yawc::{DeflatePool, Frame};

use super::client::{
    client_options, connect, describe_deflate, json_message, next_data, open_many,
};
use super::process::Target;
use super::variant::TUNED_POOL_CAPACITY;

pub struct ThroughputResult {
    pub label: String,
    pub per_sec: f64,
    pub server_cpu_us: f64,
    pub errors: u64,
    pub deflate: Option<String>,
    pub load: String,
}

/// Counts events while a measurement window is open.
#[derive(Default)]
struct Window {
    open: AtomicBool,
    stop: AtomicBool,
    count: AtomicU64,
    errors: AtomicU64,
}

impl Window {
    fn record(&self, n: u64) {
        if self.open.load(Ordering::Relaxed) {
            self.count.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Opens the window after `warmup`, closes it `secs` later; returns the
    /// count per second and the server's CPU microseconds per counted event.
    async fn measure(&self, pid: u32, warmup: Duration, secs: Duration) -> Result<(f64, f64)> {
        sleep(warmup).await;
        let server_cpu = || cpu_secs(pid).with_context(|| format!("no CPU time for pid {pid}"));
        let cpu_before = server_cpu()?;
        self.open.store(true, Ordering::Relaxed);
        let started = Instant::now();
        sleep(secs).await;
        self.open.store(false, Ordering::Relaxed);
        let elapsed = started.elapsed().as_secs_f64();
        let cpu = server_cpu()? - cpu_before;
        self.stop.store(true, Ordering::Relaxed);
        let count = self.count.load(Ordering::Relaxed) as f64;
        Ok((count / elapsed, cpu * 1e6 / count.max(1.0)))
    }
}

/// Measures `window` for `secs` after a second of warm-up while `tasks`
/// load the server, then stops them.
async fn measure_then_stop(
    target: &Target,
    window: &Window,
    secs: u64,
    tasks: Vec<JoinHandle<()>>,
    deflate: Option<String>,
) -> Result<ThroughputResult> {
    let measured = window
        .measure(
            target.pid,
            Duration::from_secs(1),
            Duration::from_secs(secs),
        )
        .await;
    let load = load_average();
    for task in &tasks {
        task.abort();
    }
    for task in tasks {
        let _ = task.await;
    }
    let (per_sec, server_cpu_us) = measured?;
    Ok(ThroughputResult {
        label: target.label.clone(),
        per_sec,
        server_cpu_us,
        errors: window.errors.load(Ordering::Relaxed),
        deflate,
        load,
    })
}

/// `conns` connections each sending a `payload_bytes` message and waiting for
/// its echo, again and again, for `secs`.
pub async fn run_echo(
    target: &Target,
    conns: u64,
    secs: u64,
    payload_bytes: usize,
) -> Result<ThroughputResult> {
    let deflate = probe_deflate(target.addr, "/echo", None).await?;
    let pool = DeflatePool::new(TUNED_POOL_CAPACITY);
    let sockets = open_many(target.addr, conns, "/echo", &pool).await?;
    let window = Arc::new(Window::default());
    let mut tasks: Vec<JoinHandle<()>> = Vec::new();
    for (i, mut ws) in sockets.into_iter().enumerate() {
        let window = window.clone();
        let message = json_message(payload_bytes, i as u64);
        tasks.push(tokio::spawn(async move {
            while !window.stop.load(Ordering::Relaxed) {
                let round_trip = async {
                    ws.send(Frame::text(message.clone())).await?;
                    next_data(&mut ws).await
                };
                match timeout(Duration::from_secs(10), round_trip).await {
                    Ok(Ok(_)) => window.record(1),
                    _ => {
                        window.errors.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
            }
        }));
    }
    measure_then_stop(target, &window, secs, tasks, deflate).await
}

/// `echo`: [`run_echo`] against the server `--impl` or `--addr` names.
pub async fn echo_command(args: &Args) -> Result<()> {
    let target = Target::from_args(args).await?;
    let result = run_echo(
        &target,
        args.num("conns", NO_ENV, 100)?,
        args.num("secs", NO_ENV, 10)?,
        args.num("payload-bytes", NO_ENV, 100)?,
    )
    .await;
    target.stop().await;
    print_result("echo", "msg", &result?);
    Ok(())
}

// ---------------------------------------------------------------------------
// fanout
// ---------------------------------------------------------------------------

/// `subs` subscribers and one publisher sending `payload_bytes` messages as
/// fast as the server takes them, for `secs`.
pub async fn run_fanout(
    target: &Target,
    subs: u64,
    secs: u64,
    payload_bytes: usize,
) -> Result<ThroughputResult> {
    let deflate = probe_deflate(target.addr, "/echo", None).await?;
    let pool = DeflatePool::new(TUNED_POOL_CAPACITY);
    let mut subscribers = open_many(target.addr, subs, "/sub", &pool).await?;
    // Each subscriber is registered once its "joined" message arrives.
    for ws in &mut subscribers {
        timeout(Duration::from_secs(30), next_data(ws))
            .await
            .map_err(|_| anyhow!("a subscriber was not registered within 30 s"))??;
    }
    let window = Arc::new(Window::default());
    let mut tasks: Vec<JoinHandle<()>> = Vec::new();
    for mut ws in subscribers {
        let window = window.clone();
        tasks.push(tokio::spawn(async move {
            while let Ok(_message) = next_data(&mut ws).await {
                window.record(1);
            }
        }));
    }
    let mut publisher = connect(target.addr, subs, "/pub", client_options(&pool)).await?;
    let publisher_window = window.clone();
    tasks.push(tokio::spawn(async move {
        let mut seq = 0;
        while !publisher_window.stop.load(Ordering::Relaxed) {
            let message = Frame::text(json_message(payload_bytes, seq));
            if publisher.send(message).await.is_err() {
                publisher_window.errors.fetch_add(1, Ordering::Relaxed);
                break;
            }
            seq += 1;
        }
    }));
    measure_then_stop(target, &window, secs, tasks, deflate).await
}

/// `fanout`: [`run_fanout`] against the server `--impl` or `--addr` names.
pub async fn fanout_command(args: &Args) -> Result<()> {
    let target = Target::from_args(args).await?;
    let result = run_fanout(
        &target,
        args.num("subs", NO_ENV, 1000)?,
        args.num("secs", NO_ENV, 10)?,
        args.num("payload-bytes", NO_ENV, 100)?,
    )
    .await;
    target.stop().await;
    print_result("fanout", "delivery", &result?);
    Ok(())
}

/// One line per run: `<scenario> <label>: rate, server CPU per `unit`, errors.
fn print_result(scenario: &str, unit: &str, r: &ThroughputResult) {
    let rate = if unit == "msg" { "msg" } else { "deliveries" };
    println!(
        "{scenario} {}: {:.0} {rate}/s, server CPU {:.2} us/{unit}, {} errors, deflate {}, load {}",
        r.label,
        r.per_sec,
        r.server_cpu_us,
        r.errors,
        describe_deflate(&r.deflate),
        r.load
    );
}

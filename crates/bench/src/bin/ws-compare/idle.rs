//! `idle`: the server's memory per idle connection, opened by worker
//! processes (`idle-client`) so that no process holds too many.

use std::{net::SocketAddr, process::Stdio, sync::Arc, time::Duration};

use anyhow::{anyhow, bail, Context, Result};
use futures::{SinkExt, StreamExt};
use roomcast_bench::args::{Args, NO_ENV};
use roomcast_bench::net::probe_deflate;
use roomcast_bench::system::{load_average, rss_kib, rss_sum_kib};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, ChildStdin, Command},
    sync::{mpsc, Semaphore},
    time::{sleep, timeout},
};
use yawc::{DeflatePool, Frame};

use super::client::{client_options, connect, describe_deflate, json_message, next_data};
use super::process::{stdin_closed, Target};
use super::variant::TUNED_POOL_CAPACITY;

pub struct IdleResult {
    pub label: String,
    pub conns: u64,
    pub failed: u64,
    pub base_kib: u64,
    pub loaded_kib: u64,
    pub client_kib: u64,
    pub deflate: Option<String>,
    pub load: String,
}

impl IdleResult {
    pub fn per_conn_kib(&self) -> f64 {
        if self.conns == 0 {
            return f64::NAN;
        }
        (self.loaded_kib as f64 - self.base_kib as f64) / self.conns as f64
    }

    pub fn print(&self) {
        println!(
            "idle {}: {} connections ({} failed), server RSS {} -> {} KiB, {:.1} KiB per connection; \
             client workers RSS {} KiB; deflate {}; load {}",
            self.label,
            self.conns,
            self.failed,
            self.base_kib,
            self.loaded_kib,
            self.per_conn_kib(),
            self.client_kib,
            describe_deflate(&self.deflate),
            self.load,
        );
    }
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

/// Opens `conns` connections from `procs` worker processes, each exchanging
/// one `msg_bytes` message each way (none with 0), holds them `settle`, and
/// measures.
pub async fn run_idle(
    target: &Target,
    conns: u64,
    procs: u64,
    msg_bytes: usize,
    settle: Duration,
) -> Result<IdleResult> {
    let deflate = probe_deflate(target.addr, "/echo", None).await?;
    sleep(Duration::from_secs(1)).await;
    let server_rss =
        || rss_kib(target.pid).with_context(|| format!("no VmRSS for pid {}", target.pid));
    let base_kib = server_rss()?;
    let procs = procs.clamp(1, conns.max(1));
    let exe = std::env::current_exe()?;
    let mut workers = Vec::new();
    let mut first = 0;
    for p in 0..procs {
        let n = conns / procs + u64::from(p < conns % procs);
        if n >= 19_000 {
            bail!("more than 19,000 connections per worker: raise --procs");
        }
        let mut child = Command::new(&exe)
            .arg("idle-client")
            .args(["--addr", &target.addr.to_string()])
            .args([
                "--conns",
                &n.to_string(),
                "--first-index",
                &first.to_string(),
            ])
            .args(["--msg-bytes", &msg_bytes.to_string(), "--max-secs", "600"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        first += n;
        let stdin = child.stdin.take().context("worker stdin")?;
        let stdout = child.stdout.take().context("worker stdout")?;
        workers.push(Worker {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
        });
    }
    let (mut ok, mut failed) = (0u64, 0u64);
    for worker in &mut workers {
        let line = timeout(Duration::from_secs(300), worker.lines.next_line())
            .await
            .map_err(|_| anyhow!("a worker did not finish connecting within 300 s"))??
            .context("a worker exited early")?;
        let mut fields = line.split_whitespace();
        if fields.next() != Some("READY") {
            bail!("unexpected worker output {line:?}");
        }
        ok += fields
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        failed += fields
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    sleep(settle).await;
    let loaded_kib = server_rss()?;
    let worker_pids: Vec<u32> = workers.iter().filter_map(|w| w.child.id()).collect();
    let client_kib = rss_sum_kib(&worker_pids);
    let load = load_average();
    for worker in workers {
        let Worker {
            mut child, stdin, ..
        } = worker;
        drop(stdin);
        if timeout(Duration::from_secs(10), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    }
    Ok(IdleResult {
        label: target.label.clone(),
        conns: ok,
        failed,
        base_kib,
        loaded_kib,
        client_kib,
        deflate,
        load,
    })
}

/// `idle`: [`run_idle`] against the server `--impl` or `--addr` names.
pub async fn idle_command(args: &Args) -> Result<()> {
    let target = Target::from_args(args).await?;
    let result = run_idle(
        &target,
        args.num("conns", NO_ENV, 10_000)?,
        args.num("procs", NO_ENV, 2)?,
        args.num("msg-bytes", NO_ENV, 512)?,
        Duration::from_secs(args.num("settle-secs", NO_ENV, 3)?),
    )
    .await;
    target.stop().await;
    result?.print();
    Ok(())
}

/// Worker process of `idle`: opens its connections, exchanges one message on
/// each, prints `READY <ok> <failed>`, and holds them until stdin closes.
pub async fn idle_client_command(args: &Args) -> Result<()> {
    let addr: SocketAddr = args
        .get("addr", NO_ENV)
        .context("--addr is required")?
        .parse()?;
    if !addr.ip().is_loopback() {
        bail!("--addr must be a loopback address");
    }
    let conns: u64 = args.num("conns", NO_ENV, 1000)?;
    let first: u64 = args.num("first-index", NO_ENV, 0)?;
    let msg_bytes: usize = args.num("msg-bytes", NO_ENV, 512)?;
    let max_secs: u64 = args.num("max-secs", NO_ENV, 600)?;
    let concurrency: usize = args.num("concurrency", NO_ENV, 256)?;
    let pool = DeflatePool::new(TUNED_POOL_CAPACITY);
    let permits = Arc::new(Semaphore::new(concurrency));
    let (done, mut results) = mpsc::unbounded_channel::<bool>();
    for i in 0..conns {
        let permits = permits.clone();
        let done = done.clone();
        let options = client_options(&pool);
        tokio::spawn(async move {
            let permit = permits.acquire_owned().await;
            let opened = timeout(Duration::from_secs(60), async {
                let mut ws = connect(addr, first + i, "/echo", options).await?;
                if msg_bytes > 0 {
                    ws.send(Frame::text(json_message(msg_bytes, first + i)))
                        .await?;
                    next_data(&mut ws).await?;
                }
                anyhow::Ok(ws)
            })
            .await;
            drop(permit);
            match opened {
                Ok(Ok(mut ws)) => {
                    let _ = done.send(true);
                    // Hold the connection until the server closes it or the process ends.
                    while ws.next().await.is_some() {}
                }
                _ => {
                    let _ = done.send(false);
                }
            }
        });
    }
    drop(done);
    let (mut ok, mut failed) = (0u64, 0u64);
    while ok + failed < conns {
        match results.recv().await {
            Some(true) => ok += 1,
            Some(false) => failed += 1,
            None => break,
        }
    }
    println!("READY {ok} {failed}");
    tokio::select! {
        _ = stdin_closed() => {}
        _ = sleep(Duration::from_secs(max_secs)) => {
            eprintln!("ws-compare idle-client: --max-secs reached, leaving");
        }
    }
    Ok(())
}

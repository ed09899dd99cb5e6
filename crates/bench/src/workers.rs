//! The coordinator's side of the worker processes: it re-executes itself as
//! `roomcast-bench worker` once per plan, sends each its plan and then
//! commands on standard input, and reads their JSON lines from standard
//! output. Workers are killed if this side is dropped, and leave by
//! themselves when their standard input closes.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command as Process};
use tokio::sync::mpsc;

use crate::spec::{Command, Progress, Ready, WorkerMsg, WorkerPlan, WorkerReport};
use crate::system::mem_available_mib;

/// Most connections one worker process holds: the file descriptor hard
/// limit here is 20,000 per process.
pub const MAX_CONNS_PER_WORKER: usize = 15_000;

/// A run stops when the machine has less memory available than this, MiB
/// (`BENCH_MIN_FREE_MIB`): better a failed run than a machine out of memory
/// (a peer may need hundreds of KiB per connection).
const MIN_FREE_MIB: u64 = 1536;

/// Running worker processes.
pub struct Workers {
    procs: Vec<(Child, Option<ChildStdin>)>,
    messages: mpsc::UnboundedReceiver<(usize, Result<WorkerMsg, String>)>,
    progress: Vec<Progress>,
    min_free_mib: u64,
    memory_checked: Instant,
}

impl Workers {
    /// Starts one worker per plan and sends it its plan.
    pub async fn spawn(plans: Vec<WorkerPlan>) -> Result<Workers> {
        let exe = std::env::current_exe().context("own executable")?;
        let (tx, messages) = mpsc::unbounded_channel();
        let mut procs = Vec::new();
        let count = plans.len();
        for (i, plan) in plans.into_iter().enumerate() {
            let mut child = Process::new(&exe)
                .arg("worker")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .context("spawning a worker")?;
            let mut stdin = child.stdin.take().ok_or_else(|| anyhow!("worker stdin"))?;
            let stdout = child
                .stdout
                .take()
                .ok_or_else(|| anyhow!("worker stdout"))?;
            let mut line = serde_json::to_string(&plan)?;
            line.push('\n');
            stdin.write_all(line.as_bytes()).await?;
            stdin.flush().await?;
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let msg = serde_json::from_str::<WorkerMsg>(&line)
                        .map_err(|e| format!("bad line from worker {i}: {e}: {line:.200}"));
                    if tx.send((i, msg)).is_err() {
                        break;
                    }
                }
                let _ = tx.send((i, Err(format!("worker {i} ended its output"))));
            });
            procs.push((child, Some(stdin)));
        }
        Ok(Workers {
            procs,
            messages,
            progress: vec![Progress::default(); count],
            min_free_mib: std::env::var("BENCH_MIN_FREE_MIB")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(MIN_FREE_MIB),
            memory_checked: Instant::now(),
        })
    }

    /// The workers' process ids (for their CPU time).
    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().filter_map(|(c, _)| c.id()).collect()
    }

    pub fn len(&self) -> usize {
        self.procs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    /// The next message that is not progress (progress is recorded), or
    /// `None` at the deadline.
    async fn next(&mut self, deadline: Instant) -> Result<Option<(usize, WorkerMsg)>> {
        loop {
            self.check_memory()?;
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(got) = tokio::time::timeout(left, self.messages.recv()).await else {
                return Ok(None);
            };
            match got {
                None => bail!("every worker ended"),
                Some((i, Err(e))) => bail!("worker {i}: {e}"),
                Some((i, Ok(WorkerMsg::Progress(p)))) => self.progress[i] = p,
                Some((i, Ok(msg))) => return Ok(Some((i, msg))),
            }
        }
    }

    /// Fails when the machine is nearly out of memory (checked twice a second).
    fn check_memory(&mut self) -> Result<()> {
        if self.memory_checked.elapsed() < Duration::from_millis(500) {
            return Ok(());
        }
        self.memory_checked = Instant::now();
        match mem_available_mib() {
            Some(free) if free < self.min_free_mib => bail!(
                "only {free} MiB of memory left (BENCH_MIN_FREE_MIB={}): stopping this run",
                self.min_free_mib
            ),
            _ => Ok(()),
        }
    }

    /// Waits until every worker has set its connections up.
    pub async fn ready(&mut self, timeout: Duration) -> Result<Vec<Ready>> {
        let deadline = Instant::now() + timeout;
        let mut ready: Vec<Option<Ready>> = vec![None; self.len()];
        while ready.iter().any(Option::is_none) {
            match self.next(deadline).await? {
                Some((i, WorkerMsg::Ready(r))) => ready[i] = Some(r),
                Some((i, other)) => bail!("worker {i}: unexpected {other:?} before ready"),
                None => bail!("workers not ready within {timeout:?}"),
            }
        }
        Ok(ready.into_iter().flatten().collect())
    }

    /// Sends a command to every worker.
    pub async fn send(&mut self, command: &Command) -> Result<()> {
        let mut line = serde_json::to_string(command)?;
        line.push('\n');
        for (i, (_, stdin)) in self.procs.iter_mut().enumerate() {
            let stdin = stdin.as_mut().ok_or_else(|| anyhow!("worker {i} closed"))?;
            stdin
                .write_all(line.as_bytes())
                .await
                .with_context(|| format!("writing to worker {i}"))?;
            stdin.flush().await?;
        }
        Ok(())
    }

    /// Asks every worker for its report and waits for them.
    pub async fn reports(&mut self, timeout: Duration) -> Result<Vec<WorkerReport>> {
        self.send(&Command::Report).await?;
        let deadline = Instant::now() + timeout;
        let mut reports: Vec<Option<WorkerReport>> = vec![None; self.len()];
        while reports.iter().any(Option::is_none) {
            match self.next(deadline).await? {
                Some((i, WorkerMsg::Report(r))) => reports[i] = Some(r),
                Some((i, other)) => bail!("worker {i}: unexpected {other:?} instead of a report"),
                None => bail!("worker reports not in within {timeout:?}"),
            }
        }
        Ok(reports.into_iter().flatten().collect())
    }

    /// Keeps reading progress for `duration`.
    pub async fn watch(&mut self, duration: Duration) -> Result<()> {
        let deadline = Instant::now() + duration;
        if let Some((i, msg)) = self.next(deadline).await? {
            bail!("worker {i}: unexpected {msg:?}");
        }
        Ok(())
    }

    /// The latest progress of all workers, added up.
    pub fn progress(&self) -> Progress {
        let mut total = Progress::default();
        for p in &self.progress {
            total.members_up += p.members_up;
            total.members_down += p.members_down;
            total.members_dead += p.members_dead;
            total.delivered += p.delivered;
            total.went_down += p.went_down;
        }
        total
    }

    /// Waits until `done` holds for the summed progress, or `timeout`;
    /// whether it held.
    pub async fn wait_for(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&Progress) -> bool,
    ) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            if done(&self.progress()) {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            self.watch(Duration::from_millis(50)).await?;
        }
    }

    /// Waits until no worker has received anything for `quiet` (in-flight
    /// messages have landed), at most `max`.
    pub async fn wait_quiet(&mut self, quiet: Duration, max: Duration) -> Result<()> {
        let end = Instant::now() + max;
        let mut last = self.progress().delivered;
        let mut since = Instant::now();
        while Instant::now() < end {
            self.watch(Duration::from_millis(100)).await?;
            let now = self.progress().delivered;
            if now != last {
                last = now;
                since = Instant::now();
            } else if since.elapsed() >= quiet {
                break;
            }
        }
        Ok(())
    }

    /// Tells every worker to leave, closes their input, and waits a little
    /// before killing the ones still there.
    pub async fn exit(mut self) {
        let _ = self.send(&Command::Exit).await;
        for (child, stdin) in &mut self.procs {
            drop(stdin.take());
            if tokio::time::timeout(Duration::from_secs(5), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
    }
}

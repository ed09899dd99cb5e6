//! The scenarios, each run against one deployment at a time:
//!
//! - [`idle`]: many connections that say hello, join and exchange one
//!   message, then stay quiet: server memory per connection and CPU at rest;
//! - [`fanout`]: rooms of members and publishers at a rate (or a sweep of
//!   rates): deliveries per second and publish→deliver latency; its presets
//!   `broadcast` (one huge room over many nodes) and `cross` (publishers on
//!   one node, members on another);
//! - [`storm`]: the clients of one node lose it (kill -9 or a drain) and come
//!   back on the other while a publisher keeps publishing;
//! - [`smoke`]: a short fanout against one roomcast node that fails on loss;
//! - [`suite`]: everything, for every server, and `docs/benchmarks.md`.
//!
//! The coordinator (this process) starts the deployment and the worker
//! processes, tells the workers when to publish and measure, reads the
//! servers' `/proc` figures, and adds up what the workers report.

pub mod fanout;
pub mod idle;
pub mod smoke;
pub mod storm;
pub mod suite;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Result};
use serde::Serialize;

use crate::args::Args;
use crate::load::Protocol;
use crate::spec::{Failover, MemberGroup, PublisherPlan, Ready, WorkerPlan};
use crate::workers::{Workers, MAX_CONNS_PER_WORKER};

/// Settings shared by every scenario.
#[derive(Clone, Debug)]
pub struct Common {
    /// Worker processes (default: one per 15,000 connections).
    pub workers: Option<usize>,
    /// Runtime threads per worker.
    pub threads: usize,
    pub deflate: bool,
    pub connect_concurrency: usize,
    pub connect_timeout_ms: u64,
    /// Longest a worker lives.
    pub worker_max_secs: u64,
}

impl Common {
    pub fn from_args(args: &Args) -> Result<Common> {
        Ok(Common {
            workers: args
                .get("workers", "BENCH_WORKERS")
                .map(|v| v.parse())
                .transpose()?,
            threads: args.num("threads", "BENCH_THREADS", 1)?,
            deflate: !args.flag("no-deflate", "BENCH_NO_DEFLATE"),
            connect_concurrency: args.num(
                "connect-concurrency",
                "BENCH_CONNECT_CONCURRENCY",
                128,
            )?,
            connect_timeout_ms: args.num(
                "connect-timeout-ms",
                "BENCH_CONNECT_TIMEOUT_MS",
                30_000,
            )?,
            worker_max_secs: args.num("worker-max-secs", "BENCH_WORKER_MAX_SECS", 1800)?,
        })
    }

    /// The same settings with at least `n` workers unless a number was
    /// given: for scenarios whose generator work comes in bursts (a storm's
    /// reconnects, a high delivery rate), so it can use both cores.
    pub fn with_default_workers(&self, n: usize) -> Common {
        Common {
            workers: Some(self.workers.unwrap_or(n)),
            ..self.clone()
        }
    }

    /// Worker processes for `conns` connections.
    pub fn worker_count(&self, conns: usize) -> usize {
        let needed = conns.div_ceil(MAX_CONNS_PER_WORKER).max(1);
        self.workers.unwrap_or(needed).max(needed)
    }
}

/// The members of every worker: `groups` cut into `workers` parts of about
/// the same number of connections (a group may be split).
pub fn split_groups(groups: &[MemberGroup], workers: usize) -> Vec<Vec<MemberGroup>> {
    let total: usize = groups.iter().map(|g| g.count).sum();
    let workers = workers.max(1);
    let mut parts: Vec<Vec<MemberGroup>> = vec![Vec::new(); workers];
    let mut w = 0;
    let mut room_in_part = 0;
    let quota = |w: usize| total / workers + usize::from(w < total % workers);
    for g in groups {
        let mut left = g.count;
        while left > 0 {
            while w + 1 < workers && room_in_part >= quota(w) {
                w += 1;
                room_in_part = 0;
            }
            let take = if w + 1 == workers {
                left
            } else {
                left.min(quota(w) - room_in_part)
            };
            parts[w].push(MemberGroup {
                room: g.room,
                node: g.node,
                count: take,
            });
            room_in_part += take;
            left -= take;
        }
    }
    parts
}

/// What the worker plans of one run have in common.
pub struct PlanTemplate {
    pub protocol: Protocol,
    pub nodes: Vec<SocketAddr>,
    pub payload_bytes: usize,
    pub exchange_bytes: Option<usize>,
    pub failover: Option<Failover>,
}

/// One plan per worker: members split evenly, publishers dealt in turn.
pub fn plans(
    template: &PlanTemplate,
    common: &Common,
    groups: &[MemberGroup],
    publishers: &[PublisherPlan],
) -> Vec<WorkerPlan> {
    let conns: usize = groups.iter().map(|g| g.count).sum::<usize>() + publishers.len();
    let workers = common.worker_count(conns);
    let parts = split_groups(groups, workers);
    parts
        .into_iter()
        .enumerate()
        .map(|(w, members)| WorkerPlan {
            worker: w,
            protocol: template.protocol,
            deflate: common.deflate,
            nodes: template.nodes.clone(),
            members,
            publishers: publishers
                .iter()
                .enumerate()
                .filter(|(i, _)| i % workers == w)
                .map(|(_, p)| p.clone())
                .collect(),
            payload_bytes: template.payload_bytes,
            exchange_bytes: template.exchange_bytes,
            failover: template.failover.clone(),
            connect_concurrency: common.connect_concurrency,
            connect_timeout_ms: common.connect_timeout_ms,
            threads: common.threads,
            max_secs: common.worker_max_secs,
        })
        .collect()
}

/// Set-up of all workers, added up.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SetupSummary {
    pub members_ok: u64,
    pub members_failed: u64,
    pub publishers_ok: u64,
    pub publishers_failed: u64,
    pub workers: usize,
    pub secs: f64,
    pub client_rss_kib: u64,
    pub errors: Vec<(String, u64)>,
}

impl SetupSummary {
    fn of(ready: &[Ready], secs: f64) -> SetupSummary {
        let mut s = SetupSummary {
            workers: ready.len(),
            secs,
            ..SetupSummary::default()
        };
        for r in ready {
            s.members_ok += r.members_ok;
            s.members_failed += r.members_failed;
            s.publishers_ok += r.publishers_ok;
            s.publishers_failed += r.publishers_failed;
            s.client_rss_kib += r.rss_kib;
            for (e, n) in &r.errors {
                match s.errors.iter_mut().find(|(k, _)| k == e) {
                    Some((_, m)) => *m += n,
                    None => s.errors.push((e.clone(), *n)),
                }
            }
        }
        s
    }
}

/// Starts the workers and waits until they are set up; refuses to go on
/// when no member or a publisher could connect.
pub async fn start_workers(plans: Vec<WorkerPlan>) -> Result<(Workers, SetupSummary)> {
    let started = std::time::Instant::now();
    let mut workers = Workers::spawn(plans).await?;
    let ready = workers.ready(Duration::from_secs(900)).await?;
    let summary = SetupSummary::of(&ready, started.elapsed().as_secs_f64());
    eprintln!(
        "  set up {} members ({} failed) and {} publishers ({} failed) in {:.1} s over {} worker(s)",
        summary.members_ok,
        summary.members_failed,
        summary.publishers_ok,
        summary.publishers_failed,
        summary.secs,
        summary.workers
    );
    for (e, n) in summary.errors.iter().take(5) {
        eprintln!("    {n} × {e}");
    }
    if summary.members_ok == 0 && summary.members_failed > 0 {
        workers.exit().await;
        bail!("no member could connect");
    }
    if summary.publishers_failed > 0 {
        workers.exit().await;
        bail!(
            "{} publisher(s) could not connect",
            summary.publishers_failed
        );
    }
    Ok((workers, summary))
}

/// Waits until nothing has arrived for a second (a server far behind gets
/// 30 s at most), then adds up every worker's report.
pub async fn settled_totals(workers: &mut Workers) -> Result<crate::stats::Totals> {
    workers
        .wait_quiet(Duration::from_secs(1), Duration::from_secs(30))
        .await?;
    let mut totals = crate::stats::Totals::default();
    for report in workers.reports(Duration::from_secs(60)).await? {
        totals.add(&report);
    }
    Ok(totals)
}

/// Sleeps until `at_us` (µs since the epoch) while the workers' progress is
/// read.
pub async fn watch_until(workers: &mut Workers, at_us: u64) -> Result<()> {
    let now = crate::system::now_us();
    if at_us > now {
        workers.watch(Duration::from_micros(at_us - now)).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(room: u32, count: usize) -> MemberGroup {
        MemberGroup {
            room,
            node: 0,
            count,
        }
    }

    #[test]
    fn groups_are_split_evenly() {
        let parts = split_groups(&[g(0, 10), g(1, 10), g(2, 5)], 2);
        let sizes: Vec<usize> = parts
            .iter()
            .map(|p| p.iter().map(|g| g.count).sum())
            .collect();
        assert_eq!(sizes, vec![13, 12]);
        let parts = split_groups(&[g(0, 100_000)], 7);
        let sizes: Vec<usize> = parts
            .iter()
            .map(|p| p.iter().map(|g| g.count).sum())
            .collect();
        assert_eq!(sizes.iter().sum::<usize>(), 100_000);
        assert!(sizes.iter().all(|&s| s <= MAX_CONNS_PER_WORKER));
    }

    #[test]
    fn workers_follow_the_descriptor_limit() {
        let common = Common {
            workers: None,
            threads: 1,
            deflate: true,
            connect_concurrency: 1,
            connect_timeout_ms: 1,
            worker_max_secs: 1,
        };
        assert_eq!(common.worker_count(500), 1);
        assert_eq!(common.worker_count(18_000), 2);
        assert_eq!(common.worker_count(100_001), 7);
        let two = Common {
            workers: Some(2),
            ..common
        };
        assert_eq!(two.worker_count(500), 2);
        assert_eq!(two.worker_count(40_000), 3);
    }
}

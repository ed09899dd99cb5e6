//! `storm`: N clients on node A of a two-node cluster, in R rooms; publishers
//! on node B keep publishing to every room. Node A is killed (`kill -9`, or
//! SIGTERM with `--drain`) and every client comes back on node B with
//! backoff and full jitter: roomcast clients resume their session with their
//! room's last offset and epoch, Socket.IO clients connect and join again.
//! Reported: the time from the kill until every client was back, what was
//! lost or received twice (from the publishers' sequence numbers, and
//! roomcast's offsets), and how the resumes went.

use std::time::Duration;

use anyhow::Result;
use serde::Serialize;

use super::{plans, settled_totals, start_workers, Common, PlanTemplate, SetupSummary};
use crate::args::Args;
use crate::peers::{DeployOptions, Deployment, ServerKind};
use crate::spec::{Command, Failover, MemberGroup, PublisherPlan, Round};
use crate::stats::{Delivery, Latency};
use crate::system::now_us;

/// Rooms per publishing connection.
const ROOMS_PER_PUBLISHER: usize = 50;

#[derive(Clone, Debug, Serialize)]
pub struct StormConfig {
    pub clients: usize,
    pub rooms: usize,
    /// Total publishes per second, over all rooms.
    pub rate: f64,
    pub payload_bytes: usize,
    /// Publishing before the kill, and after everyone is back.
    pub before_secs: f64,
    pub after_secs: f64,
    /// SIGTERM (a drain) instead of kill -9.
    pub drain: bool,
    pub backoff_base_ms: u64,
    pub backoff_cap_ms: u64,
    /// A client not back after this long gives up.
    pub give_up_secs: u64,
}

impl StormConfig {
    pub fn from_args(args: &Args) -> Result<StormConfig> {
        let e = |k: &str| format!("BENCH_STORM_{k}");
        Ok(StormConfig {
            clients: args.num("clients", &e("CLIENTS"), 10_000)?,
            rooms: args.num("rooms", &e("ROOMS"), 100)?,
            rate: args.num("rate", &e("RATE"), 200.0)?,
            payload_bytes: args.num("payload-bytes", &e("PAYLOAD_BYTES"), 100)?,
            before_secs: args.num("before-secs", &e("BEFORE_SECS"), 2.0)?,
            after_secs: args.num("after-secs", &e("AFTER_SECS"), 3.0)?,
            drain: args.flag("drain", &e("DRAIN")),
            backoff_base_ms: args.num("backoff-base-ms", &e("BACKOFF_BASE_MS"), 250)?,
            backoff_cap_ms: args.num("backoff-cap-ms", &e("BACKOFF_CAP_MS"), 2000)?,
            give_up_secs: args.num("give-up-secs", &e("GIVE_UP_SECS"), 30)?,
        })
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct StormResult {
    pub server: ServerKind,
    pub label: String,
    pub deployment: String,
    pub config: StormConfig,
    pub setup: SetupSummary,
    /// `kill -9` or `SIGTERM (drain)`.
    pub fault: String,
    pub went_down: u64,
    pub came_back: u64,
    pub not_back: u64,
    /// From the kill until the last client was back, ms.
    pub all_back_ms: Option<f64>,
    pub back_p50_ms: f64,
    pub back_p99_ms: f64,
    pub sessions_resumed: u64,
    pub fresh_sessions: u64,
    pub rooms_recovered: u64,
    pub rooms_not_recovered: u64,
    pub failed_attempts: u64,
    pub delivery: Delivery,
    pub latency: Latency,
    pub server_errors: Vec<(String, u64)>,
    pub client_errors: Vec<(String, u64)>,
}

pub async fn run(kind: ServerKind, cfg: &StormConfig, common: &Common) -> Result<StormResult> {
    let fault = if cfg.drain {
        "SIGTERM (drain)"
    } else {
        "kill -9"
    };
    eprintln!(
        "storm: {} with {} clients in {} rooms on node A, {fault}",
        kind.label(),
        cfg.clients,
        cfg.rooms
    );
    let deployment = Deployment::start(
        kind,
        DeployOptions {
            nodes: 2,
            standalone: false,
            deflate: common.deflate,
        },
    )
    .await?;
    let rooms = cfg.rooms.max(1);
    let groups: Vec<MemberGroup> = (0..rooms)
        .map(|r| MemberGroup {
            room: r as u32,
            node: 0,
            count: cfg.clients / rooms + usize::from(r < cfg.clients % rooms),
        })
        .filter(|g| g.count > 0)
        .collect();
    // Rooms dealt to publishers in turn, so each has as many (±1) and
    // every room gets about the same rate.
    let publisher_count = rooms.div_ceil(ROOMS_PER_PUBLISHER);
    let publishers: Vec<PublisherPlan> = (0..publisher_count)
        .map(|i| PublisherPlan {
            id: i as u32,
            phase: i as f64 / publisher_count as f64,
            node: 1,
            rooms: (0..rooms)
                .filter(|r| r % publisher_count == i)
                .map(|r| r as u32)
                .collect(),
        })
        .collect();
    let template = PlanTemplate {
        protocol: kind.protocol(),
        nodes: deployment.addrs(),
        payload_bytes: cfg.payload_bytes,
        exchange_bytes: None,
        failover: Some(Failover {
            nodes: vec![1],
            backoff_base_ms: cfg.backoff_base_ms,
            backoff_cap_ms: cfg.backoff_cap_ms,
            give_up_secs: cfg.give_up_secs,
        }),
    };
    let (mut workers, setup) =
        start_workers(plans(&template, common, &groups, &publishers)).await?;

    // Publish from now until well after the storm; stopped explicitly below.
    let start = now_us() + 300_000;
    let horizon = start
        + ((cfg.before_secs + cfg.after_secs) * 1e6) as u64
        + (cfg.give_up_secs + 60) * 1_000_000;
    let per_publisher = cfg.rate / publisher_count as f64;
    workers
        .send(&Command::Round(Round {
            rate_per_publisher: per_publisher,
            start_us: start,
            until_us: horizon,
            measure_from_us: start,
            measure_until_us: horizon,
        }))
        .await?;
    workers
        .watch(Duration::from_secs_f64(0.3 + cfg.before_secs))
        .await?;

    let mark = now_us();
    workers.send(&Command::Mark { at_us: mark }).await?;
    if cfg.drain {
        deployment.terminate(0);
    } else {
        deployment.kill(0);
    }
    let expected_up = setup.members_ok;
    // Everyone noticed (a drain spreads its closes over its window), then
    // everyone is back or gave up.
    workers
        .wait_for(Duration::from_secs(15), |p| p.went_down >= expected_up)
        .await?;
    let all_back = workers
        .wait_for(Duration::from_secs(cfg.give_up_secs + 5), |p| {
            p.members_down == 0 && p.members_up + p.members_dead >= expected_up
        })
        .await?;
    eprintln!(
        "  {} after the {fault}: {} back, {} down, {} gave up",
        if all_back { "settled" } else { "timed out" },
        workers.progress().members_up,
        workers.progress().members_down,
        workers.progress().members_dead
    );
    workers
        .watch(Duration::from_secs_f64(cfg.after_secs))
        .await?;
    // Stop publishing, let everything land, then count.
    let now = now_us();
    workers
        .send(&Command::Round(Round {
            rate_per_publisher: 0.0,
            start_us: now,
            until_us: now,
            measure_from_us: start,
            measure_until_us: now,
        }))
        .await?;
    let totals = settled_totals(&mut workers).await?;
    workers.exit().await;

    let back = totals
        .back_after
        .as_ref()
        .map(Latency::of)
        .unwrap_or_default();
    let r = &totals.resume;
    let not_back = r.went_down.saturating_sub(r.came_back);
    Ok(StormResult {
        server: kind,
        label: kind.label().into(),
        deployment: deployment.describe(),
        config: cfg.clone(),
        setup,
        fault: fault.into(),
        went_down: r.went_down,
        came_back: r.came_back,
        not_back,
        all_back_ms: (back.count > 0 && not_back == 0).then_some(back.max_ms),
        back_p50_ms: back.p50_ms,
        back_p99_ms: back.p99_ms,
        sessions_resumed: r.sessions_resumed,
        fresh_sessions: r.fresh_sessions,
        rooms_recovered: r.rooms_recovered,
        rooms_not_recovered: r.rooms_not_recovered,
        failed_attempts: r.failed_attempts,
        delivery: totals.delivery(),
        latency: totals.latency(),
        server_errors: totals.server_errors.clone().into_iter().collect(),
        client_errors: totals.top_errors(5),
    })
}

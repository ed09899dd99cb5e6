//! `idle`: N connections to one node, each saying hello, joining a room
//! (rooms of `room_size`) with permessage-deflate offered, and exchanging one
//! message (it publishes `msg_bytes` to its room and waits for its own copy).
//! Then nothing. Reported: the servers' resident memory growth per
//! connection (VmRSS before and after), and their CPU over a quiet period of
//! `quiet_secs` as a percentage of one core, heartbeats included.

use std::time::Duration;

use anyhow::Result;
use serde::Serialize;

use super::{plans, start_workers, Common, PlanTemplate, SetupSummary};
use crate::args::Args;
use crate::net;
use crate::peers::{DeployOptions, Deployment, ServerKind};
use crate::spec::MemberGroup;
use crate::system::{rss_kib, rss_sum_kib, CpuMeter};

/// The heartbeat interval of all three servers by default (roomcast's
/// `heartbeat.ping_interval_ms`, Engine.IO's `pingInterval`), which the idle
/// scenario runs with.
pub const HEARTBEAT_INTERVAL_SECS: u64 = 25;

/// The quiet window: four whole heartbeat intervals. Connections set up
/// together are pinged in bursts one interval apart, so a window of whole
/// intervals counts as many pings as the steady state (60 s held two of
/// the 2.4).
const QUIET_SECS: u64 = 4 * HEARTBEAT_INTERVAL_SECS;

#[derive(Clone, Debug, Serialize)]
pub struct IdleConfig {
    pub conns: usize,
    pub room_size: usize,
    pub msg_bytes: usize,
    pub quiet_secs: u64,
    /// Time after set-up before memory is read (allocators settle).
    pub settle_secs: u64,
    pub standalone: bool,
}

impl IdleConfig {
    pub fn from_args(args: &Args) -> Result<IdleConfig> {
        Ok(IdleConfig {
            conns: args.num("conns", "BENCH_IDLE_CONNS", 18_000)?,
            room_size: args.num("room-size", "BENCH_IDLE_ROOM_SIZE", 10)?,
            msg_bytes: args.num("msg-bytes", "BENCH_IDLE_MSG_BYTES", 2048)?,
            quiet_secs: args.num("quiet-secs", "BENCH_IDLE_QUIET_SECS", QUIET_SECS)?,
            settle_secs: args.num("settle-secs", "BENCH_IDLE_SETTLE_SECS", 5)?,
            standalone: args.flag("standalone", "BENCH_STANDALONE"),
        })
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct IdleResult {
    pub server: ServerKind,
    pub label: String,
    pub deployment: String,
    pub config: IdleConfig,
    pub setup: SetupSummary,
    /// The node's answer to a browser-like permessage-deflate offer.
    pub deflate: Option<String>,
    pub node_rss_before_kib: u64,
    pub node_rss_after_kib: u64,
    pub node_rss_per_conn_kib: f64,
    /// All processes of the deployment (node, presence, Redis).
    pub all_rss_per_conn_kib: f64,
    /// CPU over the quiet period, % of one core.
    pub node_cpu_pct: f64,
    pub all_cpu_pct: f64,
}

pub async fn run(kind: ServerKind, cfg: &IdleConfig, common: &Common) -> Result<IdleResult> {
    eprintln!("idle: {} with {} connections", kind.label(), cfg.conns);
    let deployment = Deployment::start(
        kind,
        DeployOptions {
            nodes: 1,
            standalone: cfg.standalone,
            deflate: common.deflate,
        },
    )
    .await?;
    let addrs = deployment.addrs();
    let (path, protocol) = kind.ws_endpoint();
    let deflate = net::probe_deflate(addrs[0], path, protocol).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let node = deployment.node_pids()[0];
    let all = deployment.all_pids();
    let node_before = rss_kib(node).unwrap_or(0);
    let all_before = rss_sum_kib(&all);

    let room_size = cfg.room_size.max(1);
    let groups: Vec<MemberGroup> = (0..cfg.conns.div_ceil(room_size))
        .map(|r| MemberGroup {
            room: r as u32,
            node: 0,
            count: room_size.min(cfg.conns - r * room_size),
        })
        .collect();
    let template = PlanTemplate {
        protocol: kind.protocol(),
        nodes: addrs,
        payload_bytes: cfg.msg_bytes,
        exchange_bytes: Some(cfg.msg_bytes),
        failover: None,
    };
    let (mut workers, setup) = start_workers(plans(&template, common, &groups, &[])).await?;
    workers.watch(Duration::from_secs(cfg.settle_secs)).await?;
    let node_after = rss_kib(node).unwrap_or(0);
    let all_after = rss_sum_kib(&all);
    eprintln!("  quiet for {} s", cfg.quiet_secs);
    let cpu = CpuMeter::start(&[node]);
    let cpu_all = CpuMeter::start(&all);
    workers.watch(Duration::from_secs(cfg.quiet_secs)).await?;
    let (_, node_cpu) = cpu.percent();
    let (_, all_cpu) = cpu_all.percent();
    let still_up = workers.progress().members_up;
    workers.exit().await;
    if still_up < setup.members_ok {
        eprintln!(
            "  warning: {} connection(s) closed during the quiet period",
            setup.members_ok - still_up
        );
    }
    let per_conn = |before: u64, after: u64| {
        if setup.members_ok == 0 {
            0.0
        } else {
            (after as f64 - before as f64) / setup.members_ok as f64
        }
    };
    Ok(IdleResult {
        server: kind,
        label: kind.label().into(),
        deployment: deployment.describe(),
        config: cfg.clone(),
        deflate,
        node_rss_before_kib: node_before,
        node_rss_after_kib: node_after,
        node_rss_per_conn_kib: per_conn(node_before, node_after),
        all_rss_per_conn_kib: per_conn(all_before, all_after),
        node_cpu_pct: node_cpu,
        all_cpu_pct: all_cpu,
        setup,
    })
}

//! `fanout`: R rooms of M members and P publishers publishing at a total
//! rate, payloads of S bytes stamped with their send time. Each rate is one
//! round: after a warm-up, deliveries received in the window give the rate,
//! and the latency of messages published in it gives p50/p99/p999. After a
//! round the coordinator waits until nothing arrives any more and checks that
//! every member got every message of its room exactly once.
//!
//! With several rates (`--rates 1000,2000,4000`) the rounds go on while the
//! server keeps up (at least 95 % of the offered deliveries, no loss, p99
//! under 1 s), so the last rounds show its capacity; the best round that met
//! the objective (p99 under `--slo-p99-ms`) is the server's result. A server
//! that met it at none of those rates gets rounds at half the lowest rate,
//! a quarter, and so on down to `--min-rate` (12.5 publishes/s), until one
//! meets it.
//!
//! Presets:
//! - `fanout`: members and publishers spread over the nodes (a member of a
//!   room on each node, so every publish crosses nodes);
//! - `cross`: publishers on the first node, all members on the last: the
//!   publish→deliver path always goes through Redis;
//! - `broadcast`: one room whose members are every connection, over many
//!   nodes, one publisher sending `--count` messages `--interval-secs` apart.

use anyhow::{bail, Result};
use serde::Serialize;

use super::{
    plans, settled_totals, start_workers, watch_until, Common, PlanTemplate, SetupSummary,
};
use crate::args::Args;
use crate::peers::{DeployOptions, Deployment, ServerKind};
use crate::spec::{Command, MemberGroup, PublisherPlan, Round};
use crate::stats::{Delivery, Latency};
use crate::system::{now_us, CpuMeter};
use crate::workers::Workers;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// Members of each room on every node, publishers in turn.
    Spread,
    /// Publishers on the first node, members on the last.
    Cross,
}

#[derive(Clone, Debug, Serialize)]
pub struct FanoutConfig {
    /// `fanout`, `cross` or `broadcast`.
    pub preset: String,
    pub nodes: usize,
    pub rooms: usize,
    /// Members per room.
    pub members: usize,
    pub publishers: usize,
    /// Total publishes per second, one round each.
    pub rates: Vec<f64>,
    pub secs: f64,
    pub warmup_secs: f64,
    pub payload_bytes: usize,
    pub placement: Placement,
    pub slo_p99_ms: f64,
    /// Go on upwards while the server keeps up (see the module doc).
    pub sweep: bool,
    /// With `sweep`, the lowest rate tried below the first one when no
    /// round met the objective (halving from the first rate).
    pub min_rate: f64,
    pub standalone: bool,
    /// Offer/enable permessage-deflate in this scenario (`BENCH_<PRESET>_DEFLATE=0|1`),
    /// when it should differ from the run's `--no-deflate`.
    pub deflate: Option<bool>,
}

/// `BENCH_<PRESET>_DEFLATE` (or `--deflate`): 0 or 1, when set.
fn deflate_override(args: &Args, env: &str) -> Option<bool> {
    args.get("deflate", env)
        .map(|v| !matches!(v.as_str(), "0" | "false" | "no"))
}

impl FanoutConfig {
    /// The `fanout` preset; flags fall back to `BENCH_FANOUT_*`.
    pub fn fanout(args: &Args) -> Result<FanoutConfig> {
        let e = |k: &str| format!("BENCH_FANOUT_{k}");
        Ok(FanoutConfig {
            preset: "fanout".into(),
            nodes: args.num("nodes", &e("NODES"), 2)?,
            rooms: args.num("rooms", &e("ROOMS"), 10)?,
            members: args.num("members", &e("MEMBERS"), 100)?,
            publishers: args.num("publishers", &e("PUBLISHERS"), 10)?,
            rates: args.list(
                "rates",
                &e("RATES"),
                // Steps of about √2: a server's figure is within a step of
                // its limit, and a ratio of 2 between two servers is two
                // steps of the same grid.
                &[
                    100.0, 140.0, 200.0, 280.0, 400.0, 560.0, 800.0, 1100.0, 1600.0, 2300.0,
                    3200.0, 4500.0, 6400.0,
                ],
            )?,
            secs: args.num("secs", &e("SECS"), 5.0)?,
            warmup_secs: args.num("warmup-secs", &e("WARMUP_SECS"), 1.0)?,
            payload_bytes: args.num("payload-bytes", &e("PAYLOAD_BYTES"), 100)?,
            placement: match args.string("placement", &e("PLACEMENT"), "spread").as_str() {
                "cross" => Placement::Cross,
                _ => Placement::Spread,
            },
            slo_p99_ms: args.num("slo-p99-ms", &e("SLO_P99_MS"), 10.0)?,
            sweep: !args.flag("no-sweep", &e("NO_SWEEP")),
            min_rate: args.num("min-rate", &e("MIN_RATE"), 12.5)?,
            standalone: args.flag("standalone", "BENCH_STANDALONE"),
            deflate: deflate_override(args, &e("DEFLATE")),
        })
    }

    /// The `cross` preset (`BENCH_CROSS_*`): 10 publishers on node 0, 10
    /// rooms of 1,000 members on node 1, 100 publishes/s: 100,000
    /// deliveries/s across nodes.
    pub fn cross(args: &Args) -> Result<FanoutConfig> {
        let e = |k: &str| format!("BENCH_CROSS_{k}");
        Ok(FanoutConfig {
            preset: "cross".into(),
            nodes: 2,
            rooms: args.num("rooms", &e("ROOMS"), 10)?,
            members: args.num("members", &e("MEMBERS"), 1000)?,
            publishers: args.num("publishers", &e("PUBLISHERS"), 10)?,
            rates: args.list("rates", &e("RATES"), &[100.0])?,
            secs: args.num("secs", &e("SECS"), 10.0)?,
            warmup_secs: args.num("warmup-secs", &e("WARMUP_SECS"), 2.0)?,
            payload_bytes: args.num("payload-bytes", &e("PAYLOAD_BYTES"), 100)?,
            placement: Placement::Cross,
            slo_p99_ms: args.num("slo-p99-ms", &e("SLO_P99_MS"), 5.0)?,
            sweep: false,
            min_rate: 0.0,
            standalone: false,
            deflate: deflate_override(args, &e("DEFLATE")),
        })
    }

    /// The `broadcast` preset (`BENCH_BROADCAST_*`): one room of `conns`
    /// members over `nodes` nodes, `count` broadcasts `interval_secs` apart.
    pub fn broadcast(args: &Args) -> Result<FanoutConfig> {
        let e = |k: &str| format!("BENCH_BROADCAST_{k}");
        let count: f64 = args.num("count", &e("COUNT"), 5.0)?;
        let interval: f64 = args.num("interval-secs", &e("INTERVAL_SECS"), 2.0)?;
        Ok(FanoutConfig {
            preset: "broadcast".into(),
            nodes: args.num("nodes", &e("NODES"), 6)?,
            rooms: 1,
            members: args.num("conns", &e("CONNS"), 100_000)?,
            publishers: 1,
            rates: vec![1.0 / interval.max(0.01)],
            secs: count.max(1.0) * interval,
            warmup_secs: 0.0,
            payload_bytes: args.num("payload-bytes", &e("PAYLOAD_BYTES"), 100)?,
            placement: Placement::Spread,
            slo_p99_ms: args.num("slo-p99-ms", &e("SLO_P99_MS"), 1000.0)?,
            sweep: false,
            min_rate: 0.0,
            standalone: false,
            deflate: deflate_override(args, &e("DEFLATE")),
        })
    }

    fn groups(&self) -> Vec<MemberGroup> {
        let mut groups = Vec::new();
        for room in 0..self.rooms as u32 {
            match self.placement {
                Placement::Cross => groups.push(MemberGroup {
                    room,
                    node: self.nodes - 1,
                    count: self.members,
                }),
                Placement::Spread => {
                    for node in 0..self.nodes {
                        let count = self.members / self.nodes
                            + usize::from(node < self.members % self.nodes);
                        if count > 0 {
                            groups.push(MemberGroup { room, node, count });
                        }
                    }
                }
            }
        }
        groups
    }

    fn publisher_plans(&self) -> Vec<PublisherPlan> {
        let (r, p) = (self.rooms, self.publishers.max(1));
        (0..p)
            .map(|i| PublisherPlan {
                id: i as u32,
                phase: i as f64 / p as f64,
                node: match self.placement {
                    Placement::Cross => 0,
                    Placement::Spread => i % self.nodes,
                },
                rooms: if p <= r {
                    (0..r)
                        .filter(|room| room % p == i)
                        .map(|x| x as u32)
                        .collect()
                } else {
                    vec![(i % r) as u32]
                },
            })
            .collect()
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct FanoutRound {
    /// Publishes per second offered.
    pub rate: f64,
    /// Deliveries per second offered (rate × members per room).
    pub offered_per_s: f64,
    /// Deliveries per second received in the window.
    pub delivered_per_s: f64,
    pub delivery: Delivery,
    pub latency: Latency,
    /// CPU of each node and of the whole deployment in the window, % of one core.
    pub node_cpu_pct: Vec<f64>,
    pub all_cpu_pct: f64,
    /// CPU of the load generator's workers, % of one core.
    pub client_cpu_pct: f64,
    pub server_errors: Vec<(String, u64)>,
    pub client_errors: Vec<(String, u64)>,
    pub publishers_dead: u64,
    pub meets_slo: bool,
}

impl FanoutRound {
    /// The server did not keep up: under 95 % of the offered deliveries,
    /// p99 over 1 s, or a message lost.
    fn saturated(&self) -> bool {
        self.delivered_per_s < 0.95 * self.offered_per_s
            || self.latency.p99_ms > 1_000.0
            || self.delivery.lost > 0
    }

    /// The deployment's CPU (nodes, Redis, presence) per delivery, µs.
    pub fn server_cpu_per_delivery_us(&self) -> f64 {
        if self.delivered_per_s > 0.0 {
            self.all_cpu_pct * 1e4 / self.delivered_per_s
        } else {
            0.0
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct FanoutResult {
    pub server: ServerKind,
    pub label: String,
    pub deployment: String,
    pub config: FanoutConfig,
    pub setup: SetupSummary,
    pub rounds: Vec<FanoutRound>,
    /// The round with the most deliveries per second that met the objective.
    pub best: Option<FanoutRound>,
}

pub async fn run(kind: ServerKind, cfg: &FanoutConfig, common: &Common) -> Result<FanoutResult> {
    if cfg.placement == Placement::Cross && cfg.nodes < 2 {
        bail!("cross placement needs two nodes");
    }
    eprintln!(
        "{}: {} with {} rooms × {} members, {} publishers, {} node(s)",
        cfg.preset,
        kind.label(),
        cfg.rooms,
        cfg.members,
        cfg.publishers,
        cfg.nodes
    );
    // Deliveries come in bursts (every member of a room at once): two
    // workers let the generator use both cores when it needs them.
    let common = Common {
        deflate: cfg.deflate.unwrap_or(common.deflate),
        ..common.with_default_workers(2)
    };
    let deployment = Deployment::start(
        kind,
        DeployOptions {
            nodes: cfg.nodes,
            standalone: cfg.standalone,
            deflate: common.deflate,
        },
    )
    .await?;
    let template = PlanTemplate {
        protocol: kind.protocol(),
        nodes: deployment.addrs(),
        payload_bytes: cfg.payload_bytes,
        exchange_bytes: None,
        failover: None,
    };
    let publishers = cfg.publisher_plans();
    let (mut workers, setup) =
        start_workers(plans(&template, &common, &cfg.groups(), &publishers)).await?;
    let meter = Meter {
        publishers: publishers.len(),
        node_pids: deployment.node_pids(),
        all_pids: deployment.all_pids(),
        worker_pids: workers.pids(),
    };
    let mut rounds = Vec::new();
    for &rate in &cfg.rates {
        let round = measure(&mut workers, cfg, &meter, rate).await?;
        // Sweep on to the server's capacity, not just to the objective: the
        // rounds past it show how far each server gets.
        let stop = cfg.sweep && round.saturated();
        let dead = round.publishers_dead > 0;
        rounds.push(round);
        if stop || dead {
            break;
        }
    }
    // A server that met the objective at no rate of the sweep gets rounds
    // at lower rates, halving down to `min_rate`, until one meets it: its
    // figure is then a rate, not "none", and the ratios between servers
    // are defined. Those rounds come first in the list, lowest first.
    if cfg.sweep
        && cfg.min_rate > 0.0
        && !rounds.iter().any(|r| r.meets_slo || r.publishers_dead > 0)
    {
        let lowest = rounds.iter().map(|r| r.rate).reduce(f64::min);
        let mut rate = lowest.unwrap_or(0.0) / 2.0;
        let mut lower = Vec::new();
        while rate >= cfg.min_rate {
            let round = measure(&mut workers, cfg, &meter, rate).await?;
            let done = round.meets_slo || round.publishers_dead > 0;
            lower.push(round);
            if done {
                break;
            }
            rate /= 2.0;
        }
        rounds.splice(0..0, lower.into_iter().rev());
    }
    workers.exit().await;
    let best = rounds
        .iter()
        .filter(|r| r.meets_slo)
        .max_by(|a, b| a.delivered_per_s.total_cmp(&b.delivered_per_s))
        .cloned();
    Ok(FanoutResult {
        server: kind,
        label: kind.label().into(),
        deployment: deployment.describe(),
        config: cfg.clone(),
        setup,
        rounds,
        best,
    })
}

/// What a round's CPU figures are taken of.
struct Meter {
    publishers: usize,
    node_pids: Vec<u32>,
    all_pids: Vec<u32>,
    worker_pids: Vec<u32>,
}

/// One round at `rate` publishes per second: publish, measure the window,
/// wait for the stragglers, and check every member's stream.
async fn measure(
    workers: &mut Workers,
    cfg: &FanoutConfig,
    meter: &Meter,
    rate: f64,
) -> Result<FanoutRound> {
    let start = now_us() + 500_000;
    let from = start + (cfg.warmup_secs * 1e6) as u64;
    let until = from + (cfg.secs * 1e6) as u64;
    workers
        .send(&Command::Round(Round {
            rate_per_publisher: rate / meter.publishers.max(1) as f64,
            start_us: start,
            until_us: until,
            measure_from_us: from,
            measure_until_us: until,
        }))
        .await?;
    watch_until(workers, from).await?;
    let node_cpu = CpuMeter::start(&meter.node_pids);
    let all_cpu = CpuMeter::start(&meter.all_pids);
    let client_cpu = CpuMeter::start(&meter.worker_pids);
    watch_until(workers, until).await?;
    let (node_cpu_pct, _) = node_cpu.percent();
    let (_, all_cpu_pct) = all_cpu.percent();
    let (_, client_cpu_pct) = client_cpu.percent();
    let totals = settled_totals(workers).await?;
    let delivery = totals.delivery();
    let latency = totals.latency();
    let offered_per_s = rate * cfg.members as f64;
    let delivered_per_s = totals.delivered_in_window as f64 / cfg.secs;
    let meets_slo = meets_objective(
        &delivery,
        totals.publishers_dead,
        &latency,
        cfg.slo_p99_ms,
        delivered_per_s,
        offered_per_s,
    );
    let round = FanoutRound {
        rate,
        offered_per_s,
        delivered_per_s,
        delivery,
        latency,
        node_cpu_pct,
        all_cpu_pct,
        client_cpu_pct,
        server_errors: totals.server_errors.clone().into_iter().collect(),
        client_errors: totals.top_errors(5),
        publishers_dead: totals.publishers_dead,
        meets_slo,
    };
    eprintln!(
        "  rate {rate}/s: {:.0} deliveries/s of {:.0} offered, p50 {:.2} ms, p99 {:.2} ms, lost {}, duplicates {}, out of order {}, server CPU {:.0} %, load generator CPU {:.0} %{}",
        round.delivered_per_s,
        round.offered_per_s,
        round.latency.p50_ms,
        round.latency.p99_ms,
        round.delivery.lost,
        round.delivery.duplicates,
        round.delivery.reordered,
        all_cpu_pct,
        client_cpu_pct,
        if meets_slo { "" } else { "  (objective missed)" }
    );
    Ok(round)
}

/// Whether a round meets the objective: every message delivered exactly
/// once and in its publisher's order (a message after a later one of the
/// same publisher is a failure of delivery, as a loss is), no member or
/// publisher gone, the p99 within `slo_p99_ms`, and at least 95 % of the
/// offered rate delivered.
pub fn meets_objective(
    delivery: &Delivery,
    publishers_dead: u64,
    latency: &Latency,
    slo_p99_ms: f64,
    delivered_per_s: f64,
    offered_per_s: f64,
) -> bool {
    delivery.lost == 0
        && delivery.duplicates == 0
        && delivery.reordered == 0
        && delivery.members_dead == 0
        && publishers_dead == 0
        && latency.count > 0
        && latency.p99_ms <= slo_p99_ms
        && delivered_per_s >= 0.95 * offered_per_s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_with_messages_out_of_order_misses_the_objective() {
        let delivery = Delivery {
            published: 100,
            expected: 10_000,
            received: 10_000,
            ..Delivery::default()
        };
        let latency = Latency {
            count: 10_000,
            p50_ms: 1.0,
            p99_ms: 4.0,
            p999_ms: 6.0,
            max_ms: 8.0,
        };
        let met = |d: &Delivery, p99: f64| meets_objective(d, 0, &latency, p99, 9_990.0, 10_000.0);
        assert!(met(&delivery, 10.0));
        assert!(!met(&delivery, 3.9), "p99 over the objective");
        let reordered = Delivery {
            reordered: 1,
            ..delivery
        };
        assert!(!met(&reordered, 10.0), "one message out of order");
        let lost = Delivery {
            lost: 1,
            ..delivery
        };
        assert!(!met(&lost, 10.0));
        assert!(
            !meets_objective(&delivery, 0, &latency, 10.0, 9_000.0, 10_000.0),
            "under 95 %"
        );
        assert!(!meets_objective(
            &delivery, 1, &latency, 10.0, 9_990.0, 10_000.0
        ));
    }

    fn config(placement: Placement, rooms: usize, publishers: usize) -> FanoutConfig {
        FanoutConfig {
            preset: "fanout".into(),
            nodes: 2,
            rooms,
            members: 5,
            publishers,
            rates: vec![1.0],
            secs: 1.0,
            warmup_secs: 0.0,
            payload_bytes: 100,
            placement,
            slo_p99_ms: 10.0,
            sweep: false,
            min_rate: 0.0,
            standalone: false,
            deflate: None,
        }
    }

    #[test]
    fn spread_puts_members_of_every_room_on_every_node() {
        let c = config(Placement::Spread, 3, 2);
        let groups = c.groups();
        assert_eq!(groups.iter().map(|g| g.count).sum::<usize>(), 15);
        assert!(groups
            .iter()
            .any(|g| g.room == 0 && g.node == 0 && g.count == 3));
        assert!(groups
            .iter()
            .any(|g| g.room == 0 && g.node == 1 && g.count == 2));
        let pubs = c.publisher_plans();
        assert_eq!(pubs[0].rooms, vec![0, 2]);
        assert_eq!(pubs[1].rooms, vec![1]);
        assert_eq!(pubs[1].node, 1);
    }

    #[test]
    fn cross_separates_publishers_from_members() {
        let c = config(Placement::Cross, 2, 4);
        assert!(c.groups().iter().all(|g| g.node == 1));
        let pubs = c.publisher_plans();
        assert!(pubs.iter().all(|p| p.node == 0 && p.rooms.len() == 1));
        assert_eq!(pubs[3].rooms, vec![1]);
    }
}

//! `suite` (`make bench`): every scenario for every server, at the sizes of
//! issue #8 unless `BENCH_*` variables lower them, then the tables and the
//! targets in `docs/benchmarks.md`. A scenario that fails for one server is
//! recorded as failed and the suite goes on.

use anyhow::Result;

use super::fanout::{self, FanoutConfig};
use super::idle::{self, IdleConfig};
use super::storm::{self, StormConfig};
use super::Common;
use crate::args::Args;
use crate::floor::{FloorConfig, FloorResult};
use crate::peers::ServerKind;
use crate::report::{Outcome, RunReport};

/// The scenarios, in the order they run (`floor` once, before the servers).
pub const SCENARIOS: [&str; 6] = ["floor", "idle", "fanout", "cross", "storm", "broadcast"];

/// Runs the suite; `progress` sees the report after every scenario (the
/// document is rewritten then, so a run cut short keeps what it measured).
pub async fn run(
    args: &Args,
    common: &Common,
    report: &mut RunReport,
    progress: &mut dyn FnMut(&RunReport),
) -> Result<()> {
    let servers = ServerKind::parse_list(&args.string("servers", "BENCH_SERVERS", "all"))?;
    let scenarios = args.string("scenarios", "BENCH_SCENARIOS", &SCENARIOS.join(","));
    for scenario in scenarios.split(',').filter(|s| !s.is_empty()) {
        if scenario == "floor" {
            match floor(args).await {
                Ok(result) => report.floor = Some(result),
                Err(e) => {
                    eprintln!("floor: FAILED: {e:#}");
                    report.failures.push(("floor".into(), format!("{e:#}")));
                }
            }
            progress(report);
            continue;
        }
        for &kind in &servers {
            let outcome = run_one(scenario, kind, args, common).await;
            match outcome {
                Ok(outcome) => report.outcomes.push(outcome),
                Err(e) => {
                    eprintln!("{scenario} with {}: FAILED: {e:#}", kind.label());
                    report
                        .failures
                        .push((format!("{scenario} / {}", kind.label()), format!("{e:#}")));
                }
            }
            progress(report);
        }
    }
    Ok(())
}

/// The kernel floor of this machine (no server involved), on a blocking thread.
pub async fn floor(args: &Args) -> Result<FloorResult> {
    let config = FloorConfig::from_args(args)?;
    eprintln!(
        "floor: a bare fan-out to {} loopback sockets × {} rounds, then {} × {} bare pings",
        config.conns, config.rounds, config.ping_conns, config.ping_ticks
    );
    tokio::task::spawn_blocking(move || crate::floor::run(&config)).await?
}

/// One scenario against one server.
pub async fn run_one(
    scenario: &str,
    kind: ServerKind,
    args: &Args,
    common: &Common,
) -> Result<Outcome> {
    Ok(match scenario {
        "idle" => Outcome::Idle(idle::run(kind, &IdleConfig::from_args(args)?, common).await?),
        "fanout" => Outcome::Fanout(fanout::run(kind, &FanoutConfig::fanout(args)?, common).await?),
        "cross" => Outcome::Fanout(fanout::run(kind, &FanoutConfig::cross(args)?, common).await?),
        "broadcast" => {
            Outcome::Fanout(fanout::run(kind, &FanoutConfig::broadcast(args)?, common).await?)
        }
        "storm" => Outcome::Storm(storm::run(kind, &StormConfig::from_args(args)?, common).await?),
        other => anyhow::bail!("unknown scenario {other:?} ({})", SCENARIOS.join(", ")),
    })
}

/// The `BENCH_*` variables set for this run, for the report.
pub fn overrides() -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with("BENCH_"))
        .collect();
    v.sort();
    v
}

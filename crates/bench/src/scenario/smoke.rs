//! `smoke` (`make bench-smoke`): a short fanout against one roomcast node
//! in its embedded in-memory mode (no Redis needed), two rounds of a few
//! seconds. It fails when any connection could not be set up, nothing was
//! delivered, or any message was lost or delivered twice; latency is shown
//! but not judged (the machine is shared with everything else `make test`
//! runs).

use anyhow::Result;

use super::fanout::{self, FanoutConfig, FanoutResult, Placement};
use super::Common;
use crate::args::Args;
use crate::peers::ServerKind;

pub fn config(args: &Args) -> Result<FanoutConfig> {
    let e = |k: &str| format!("BENCH_SMOKE_{k}");
    Ok(FanoutConfig {
        preset: "fanout".into(),
        nodes: 1,
        rooms: args.num("rooms", &e("ROOMS"), 10)?,
        members: args.num("members", &e("MEMBERS"), 20)?,
        publishers: args.num("publishers", &e("PUBLISHERS"), 5)?,
        rates: args.list("rates", &e("RATES"), &[200.0, 500.0])?,
        secs: args.num("secs", &e("SECS"), 3.0)?,
        warmup_secs: args.num("warmup-secs", &e("WARMUP_SECS"), 1.0)?,
        payload_bytes: args.num("payload-bytes", &e("PAYLOAD_BYTES"), 300)?,
        placement: Placement::Spread,
        slo_p99_ms: 1000.0,
        sweep: false,
        min_rate: 0.0,
        standalone: !args.flag("with-redis", &e("WITH_REDIS")),
        deflate: None,
    })
}

/// Runs the smoke fanout; the result, and the reasons it failed (none: pass).
pub async fn run(args: &Args, common: &Common) -> Result<(FanoutResult, Vec<String>)> {
    let cfg = config(args)?;
    let result = fanout::run(ServerKind::Roomcast, &cfg, common).await?;
    let mut problems = Vec::new();
    if result.setup.members_failed > 0 || result.setup.publishers_failed > 0 {
        problems.push(format!(
            "{} member(s) and {} publisher(s) could not connect",
            result.setup.members_failed, result.setup.publishers_failed
        ));
    }
    if result.rounds.len() != cfg.rates.len() {
        problems.push(format!(
            "{} of {} rounds ran",
            result.rounds.len(),
            cfg.rates.len()
        ));
    }
    for round in &result.rounds {
        let d = &round.delivery;
        let at = format!("at {} publishes/s", round.rate);
        if d.received == 0 {
            problems.push(format!("nothing delivered {at}"));
        }
        if d.lost > 0 || d.duplicates > 0 {
            problems.push(format!("{} lost, {} duplicated {at}", d.lost, d.duplicates));
        }
        if d.reordered > 0 {
            problems.push(format!("{} messages out of order {at}", d.reordered));
        }
        if d.offset_gaps > 0 || d.offset_duplicates > 0 {
            problems.push(format!(
                "{} offset gaps, {} repeated offsets {at}",
                d.offset_gaps, d.offset_duplicates
            ));
        }
        if d.members_dead > 0 || round.publishers_dead > 0 {
            problems.push(format!(
                "{} member(s) and {} publisher(s) lost their connection {at}",
                d.members_dead, round.publishers_dead
            ));
        }
    }
    Ok((result, problems))
}

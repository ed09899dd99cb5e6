//! Results as Markdown tables and JSON, the targets of issue #8 checked
//! against them, and `docs/benchmarks.md`.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::floor::FloorResult;
use crate::peers::ServerKind;
use crate::scenario::fanout::{FanoutResult, FanoutRound};
use crate::scenario::idle::{self, IdleResult};
use crate::scenario::storm::StormResult;
use crate::system;

/// One scenario's result for one server.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "scenario", rename_all = "lowercase")]
pub enum Outcome {
    Idle(IdleResult),
    Fanout(FanoutResult),
    Storm(StormResult),
}

/// Everything a run produced, as written to `--out`.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    pub command: String,
    pub machine: String,
    pub date: String,
    pub load_average_at_end: String,
    pub outcomes: Vec<Outcome>,
    /// The kernel floor of this machine (`floor`), when it ran.
    pub floor: Option<FloorResult>,
    /// Scenarios that could not run, with the reason.
    pub failures: Vec<(String, String)>,
}

impl RunReport {
    pub fn new(command: String) -> RunReport {
        RunReport {
            command,
            machine: system::machine(),
            date: system::utc_now(),
            load_average_at_end: String::new(),
            outcomes: Vec::new(),
            floor: None,
            failures: Vec::new(),
        }
    }

    pub fn write_json(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, serde_json::to_string_pretty(self)?)
            .with_context(|| format!("writing {}", path.display()))
    }

    fn idle(&self) -> Vec<&IdleResult> {
        self.outcomes
            .iter()
            .filter_map(|o| match o {
                Outcome::Idle(r) => Some(r),
                _ => None,
            })
            .collect()
    }

    fn fanout(&self, preset: &str) -> Vec<&FanoutResult> {
        self.outcomes
            .iter()
            .filter_map(|o| match o {
                Outcome::Fanout(r) if r.config.preset == preset => Some(r),
                _ => None,
            })
            .collect()
    }

    fn storm(&self) -> Vec<&StormResult> {
        self.outcomes
            .iter()
            .filter_map(|o| match o {
                Outcome::Storm(r) => Some(r),
                _ => None,
            })
            .collect()
    }

    /// Every table with results, one section each.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        if let Some(floor) = &self.floor {
            out.push_str(&floor_table(floor));
        }
        let idle = self.idle();
        if !idle.is_empty() {
            out.push_str("### Idle connections\n\n");
            out.push_str(&idle_table(&idle));
        }
        for (preset, title) in [
            ("fanout", "Fan-out"),
            ("cross", "Cross-node latency"),
            ("broadcast", "One broadcast to every connection"),
        ] {
            let results = self.fanout(preset);
            if results.is_empty() {
                continue;
            }
            let _ = writeln!(out, "### {title}\n");
            out.push_str(&fanout_setup(&results));
            if preset == "fanout" {
                out.push_str(&fanout_summary(&results));
                out.push('\n');
            }
            if preset == "broadcast" {
                out.push_str(&broadcast_table(&results));
            } else {
                out.push_str(&rounds_table(&results));
            }
        }
        let storm = self.storm();
        if !storm.is_empty() {
            out.push_str("### Reconnect storm\n\n");
            out.push_str(&storm_table(&storm));
        }
        if !self.failures.is_empty() {
            out.push_str("### Runs that failed\n\n| run | error |\n|---|---|\n");
            for (run, error) in &self.failures {
                let _ = writeln!(
                    out,
                    "| {run} | {} |",
                    error.replace('|', "/").replace('\n', " ")
                );
            }
            out.push('\n');
        }
        out
    }

    /// Issue #8's targets, each with what was measured.
    pub fn targets(&self) -> Vec<Target> {
        vec![
            self.idle_target(),
            self.broadcast_target(),
            self.fanout_target(),
            self.cross_target(),
            self.storm_target(),
            self.coverage_target(),
        ]
    }

    fn roomcast<'a, T>(
        &self,
        results: &[&'a T],
        server: impl Fn(&T) -> ServerKind,
    ) -> Option<&'a T> {
        results
            .iter()
            .copied()
            .find(|r| server(r) == ServerKind::Roomcast)
    }

    fn idle_target(&self) -> Target {
        let goal = "18,000 idle connections on one node, deflate negotiated and one message each: ≤ 4 KiB server RSS per connection, heartbeats ≤ 1 % of one core";
        let Some(r) = self.roomcast(&self.idle(), |r| r.server) else {
            return Target::not_run(1, goal);
        };
        let deflate = r
            .deflate
            .as_deref()
            .is_some_and(|d| d.contains("permessage-deflate"));
        let size_ok = r.setup.members_ok >= 18_000;
        let met = size_ok && deflate && r.node_rss_per_conn_kib <= 4.0 && r.node_cpu_pct <= 1.0;
        Target {
            number: 1,
            goal: goal.into(),
            measured: format!(
                "{} connections ({} failed), deflate {}, {:.2} KiB per connection, {:.2} % of a core over {} s",
                r.setup.members_ok,
                r.setup.members_failed,
                if deflate { "negotiated" } else { "NOT negotiated" },
                r.node_rss_per_conn_kib,
                r.node_cpu_pct,
                r.config.quiet_secs,
            ) + if size_ok { "" } else { " (below the target size)" }
                + &self.heartbeat_floor(r.setup.members_ok as f64),
            met: Some(met),
        }
    }

    fn broadcast_target(&self) -> Target {
        let goal = "100,000 connections over six nodes + presence + Redis: one broadcast to a room of all of them reaches every member; p99 of that delivery";
        let Some(r) = self.roomcast(&self.fanout("broadcast"), |r| r.server) else {
            return Target::not_run(2, goal);
        };
        let Some(round) = r.rounds.first() else {
            return Target::not_run(2, goal);
        };
        let size_ok = r.setup.members_ok >= 100_000 && r.config.nodes >= 6;
        let reached = round.delivery.lost == 0
            && round.delivery.members_dead == 0
            && round.delivery.published > 0;
        Target {
            number: 2,
            goal: goal.into(),
            measured: format!(
                "{} members on {} nodes ({} failed to connect); {} broadcasts, {} of {} deliveries, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                r.setup.members_ok,
                r.config.nodes,
                r.setup.members_failed,
                round.delivery.published,
                round.delivery.received,
                round.delivery.expected,
                round.latency.p50_ms,
                round.latency.p99_ms,
                round.latency.max_ms,
            ) + if size_ok { "" } else { " (below the target size)" },
            met: Some(size_ok && reached),
        }
    }

    fn fanout_target(&self) -> Target {
        let goal = "fan-out: roomcast ≥ 10× the deliveries/s of Socket.IO + redis-adapter and ≥ 2× socketioxide + redis, at p99 ≤ 10 ms";
        let results = self.fanout("fanout");
        // A server's figure: its best rate meeting the objective or, when
        // no round met it, the lowest rate tried (its figure is below that,
        // so a ratio against it is a lower bound).
        let best = |kind: ServerKind| {
            results
                .iter()
                .find(|r| r.server == kind)
                .map(|r| match &r.best {
                    Some(b) => (b.delivered_per_s, true),
                    None => (
                        r.rounds
                            .iter()
                            .map(|x| x.offered_per_s)
                            .fold(f64::INFINITY, f64::min),
                        false,
                    ),
                })
        };
        let (Some((rc, rc_met)), Some(sio), Some(sx)) = (
            best(ServerKind::Roomcast),
            best(ServerKind::SocketIo),
            best(ServerKind::Socketioxide),
        ) else {
            return Target::not_run(3, goal);
        };
        let rc = if rc_met { rc } else { 0.0 };
        let ratio = |(peer, _): (f64, bool)| fanout_ratio(rc, peer);
        let versus = |name: &str, (peer, met): (f64, bool)| {
            let r = times(fanout_ratio(rc, peer));
            if met {
                format!("{name} {peer:.0} ({r})")
            } else if peer.is_finite() {
                format!(
                    "{name}: no round met the objective, down to {peer:.0} offered/s (at least {r})"
                )
            } else {
                format!("{name}: no round run")
            }
        };
        // What each server's best round cost per delivery, against the
        // kernel's price of the write alone: the ratio target asks roomcast
        // to cost a tenth of Socket.IO per delivery.
        let per_delivery = {
            let cost = |kind: ServerKind| {
                results
                    .iter()
                    .find(|r| r.server == kind)
                    .and_then(|r| r.best.as_ref())
                    .map(|b| format!("{} {:.2} µs", kind.label(), b.server_cpu_per_delivery_us()))
            };
            let mut parts: Vec<String> = ServerKind::ALL.iter().filter_map(|&k| cost(k)).collect();
            if let Some(f) = &self.floor {
                parts.push(format!("the kernel's write alone {:.2} µs", f.send_us));
            }
            if parts.is_empty() {
                String::new()
            } else {
                format!(
                    "; server CPU per delivery at the best round: {}",
                    parts.join(", ")
                )
            }
        };
        let capped = results
            .iter()
            .find(|r| r.server == ServerKind::Roomcast)
            .is_some_and(|r| {
                r.rounds.len() == r.config.rates.len()
                    && r.rounds.last().is_some_and(|x| x.meets_slo)
            });
        Target {
            number: 3,
            goal: goal.into(),
            measured: format!(
                "best deliveries/s at p99 ≤ 10 ms without loss or reordering: roomcast {}, {}, {}{}",
                if rc > 0.0 {
                    format!("{rc:.0}")
                } else {
                    "no round met the objective".into()
                },
                versus("Socket.IO", sio),
                versus("socketioxide", sx),
                if capped {
                    "; roomcast met the objective at the highest rate tried, so its figure is a lower bound"
                } else {
                    ""
                }
            ) + &per_delivery,
            met: Some(rc > 0.0 && ratio(sio) >= 10.0 && ratio(sx) >= 2.0),
        }
    }

    fn cross_target(&self) -> Target {
        let goal = "cross-node latency: publish→deliver p99 ≤ 5 ms at 100,000 deliveries/s across two nodes";
        let Some(r) = self.roomcast(&self.fanout("cross"), |r| r.server) else {
            return Target::not_run(4, goal);
        };
        let Some(round) = r.rounds.first() else {
            return Target::not_run(4, goal);
        };
        let rate_ok = round.delivered_per_s >= 95_000.0;
        Target {
            number: 4,
            goal: goal.into(),
            measured: format!(
                "{:.0} deliveries/s (offered {:.0}), p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, lost {}",
                round.delivered_per_s,
                round.offered_per_s,
                round.latency.p50_ms,
                round.latency.p99_ms,
                round.latency.p999_ms,
                round.delivery.lost,
            ) + &self.fanout_floor(r.config.members),
            met: Some(rate_ok && round.latency.p99_ms <= 5.0 && round.delivery.lost == 0),
        }
    }

    /// The kernel floor beside target 1: the least its heartbeats can cost.
    fn heartbeat_floor(&self, conns: f64) -> String {
        match &self.floor {
            Some(f) if f.pingpong_us > 0.0 => format!(
                "; kernel floor here: {:.2} % of a core for the pings and pongs alone",
                f.heartbeat_pct(conns, HEARTBEAT_INTERVAL_SECS)
            ),
            _ => String::new(),
        }
    }

    /// The kernel floor beside target 4: how long a bare fan-out to a room's
    /// members takes to drain (measured at the floor's size, named).
    fn fanout_floor(&self, members: usize) -> String {
        match &self.floor {
            Some(f) => format!(
                "; kernel floor here: a bare write to {} sockets{} drains in p50 {:.2} ms, p99 {:.2} ms",
                count(f.config.conns as f64),
                if f.config.conns == members {
                    String::new()
                } else {
                    format!(" (rooms here have {})", count(members as f64))
                },
                f.drain_p50_ms,
                f.drain_p99_ms
            ),
            None => String::new(),
        }
    }

    fn storm_target(&self) -> Target {
        let goal = "storm: 10,000 clients of a killed node all resumed on the other ≤ 3 s after the kill, 0 lost, 0 duplicated";
        let Some(r) = self
            .storm()
            .into_iter()
            .find(|r| r.server == ServerKind::Roomcast && !r.config.drain)
        else {
            return Target::not_run(5, goal);
        };
        let size_ok = r.setup.members_ok >= 10_000;
        let d = &r.delivery;
        let met = size_ok
            && r.all_back_ms.is_some_and(|ms| ms <= 3000.0)
            && d.lost == 0
            && d.duplicates == 0
            && d.reordered == 0
            && d.offset_duplicates == 0
            && r.rooms_not_recovered == 0;
        Target {
            number: 5,
            goal: goal.into(),
            measured: format!(
                "{} clients, {} back, all back after {}, {} sessions resumed, {} rooms not recovered, {} lost, {} duplicated",
                r.setup.members_ok,
                r.came_back,
                r.all_back_ms.map(|ms| format!("{ms:.0} ms")).unwrap_or_else(|| "—".into()),
                r.sessions_resumed,
                r.rooms_not_recovered,
                d.lost,
                d.duplicates + d.offset_duplicates,
            ) + if size_ok { "" } else { " (below the target size)" },
            met: Some(met),
        }
    }

    fn coverage_target(&self) -> Target {
        let goal = "the tables above for every scenario, for roomcast and both peers, with the command that reproduces them";
        let scenarios: Vec<Vec<ServerKind>> = vec![
            self.idle().iter().map(|r| r.server).collect(),
            self.fanout("fanout").iter().map(|r| r.server).collect(),
            self.fanout("broadcast").iter().map(|r| r.server).collect(),
            self.fanout("cross").iter().map(|r| r.server).collect(),
            self.storm().iter().map(|r| r.server).collect(),
        ];
        let complete = scenarios
            .iter()
            .filter(|s| ServerKind::ALL.iter().all(|k| s.contains(k)))
            .count();
        Target {
            number: 6,
            goal: goal.into(),
            measured: format!(
                "{complete} of 5 scenarios have results for all three servers{}",
                if self.failures.is_empty() {
                    String::new()
                } else {
                    format!("; {} run(s) failed (listed above)", self.failures.len())
                }
            ),
            met: Some(complete == 5),
        }
    }

    /// The whole `docs/benchmarks.md`.
    pub fn document(&self, settings: &[(String, String)]) -> String {
        let mut out = String::new();
        out.push_str("# Benchmarks\n\n");
        out.push_str(
            "Written by `make bench` (`roomcast-bench suite`); do not edit by hand, run it again.\n\
             roomcast, Socket.IO 4.8 with `@socket.io/redis-adapter`, and socketioxide with\n\
             `socketioxide-redis` run the same scenarios on the same machine, each as nodes\n\
             behind one Redis of their own (roomcast also with its presence service), driven by\n\
             `roomcast-bench` worker processes over loopback. The load generator and the servers\n\
             share the machine's cores, so absolute figures are lower than on separate hosts;\n\
             the comparison is like for like.\n\n",
        );
        let _ = writeln!(out, "- **Command:** `{}`", self.command);
        let _ = writeln!(out, "- **Machine:** {}", self.machine);
        let _ = writeln!(out, "- **Date:** {}", self.date);
        let _ = writeln!(
            out,
            "- **Load average at the end:** {}",
            self.load_average_at_end
        );
        if !settings.is_empty() {
            let list: Vec<String> = settings.iter().map(|(k, v)| format!("`{k}={v}`")).collect();
            let _ = writeln!(out, "- **Scale overrides:** {}", list.join(", "));
        }
        out.push_str(HISTORY);
        out.push_str(
            "\n## Targets (issue #8)\n\n| # | target | measured | met |\n|---|---|---|---|\n",
        );
        for t in self.targets() {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                t.number,
                t.goal,
                t.measured,
                match t.met {
                    Some(true) => "yes",
                    Some(false) => "**no**",
                    None => "not run",
                }
            );
        }
        out.push_str("\n## Results\n\n");
        out.push_str(&self.markdown());
        out.push_str(METHOD);
        out
    }
}

/// The line that points to the earlier runs: this file is rewritten whole,
/// so runs and the notes written by hand on them are kept in another.
const HISTORY: &str = "- **Earlier runs:** [benchmarks-history.md](benchmarks-history.md), \
with the notes written by hand on each. `make bench` rewrites this file whole: \
move this run and its notes there first.\n";

const METHOD: &str = "\
## How it is measured

- **Deployment.** Each server runs as separate processes: roomcast as
  `roomcast-gateway` nodes + `roomcast-presence` + `redis-server` (release
  build), the peers as `bench/peers/socketio/server.js` (Node.js) and
  `bench/peers/socketioxide` nodes + `redis-server`. Every node listens on
  127.0.0.1; the peers relay `publish` events with `io.to(room).emit`.
- **Clients.** `roomcast-bench` workers (one process per 15,000 connections,
  the per-process descriptor limit being 20,000) connect from 127.0.0.2 and
  up, offer permessage-deflate (no context takeover), and speak roomcast's JSON
  subprotocol or Engine.IO v4 / Socket.IO v5 over the websocket transport.
- **Latency** is from the publisher's clock, written into the payload when it
  is sent, to the member's clock when the message is decoded (one machine, one
  clock), recorded in HdrHistogram; publishers follow a fixed schedule, so a
  stalled publisher shows as latency, not as a lower rate. The P publishers
  of a round are spread evenly over the period (publisher i sends at i/P of
  it), so the total rate arrives evenly spaced, not as one burst of every
  publisher at the same instant.
- **Loss, duplicates and order** come from the (publisher, sequence) stamp of
  every payload and, for roomcast, the room offsets: after each round the
  coordinator waits until nothing more arrives and checks that every member
  received every message published to its room exactly once; a message that
  arrives after a later one of the same publisher counts as out of order.
- **Memory** is the server process's VmRSS (`/proc/PID/status`) before the
  connections and after they are set up; **CPU** is utime + stime from
  `/proc/PID/stat` over the window, as a percentage of one core. The idle
  window lasts four heartbeat intervals (100 s; all three servers ping every
  25 s): the pings of connections set up together come in bursts one
  interval apart, so a window of whole intervals holds as many pings as the
  steady state, where a shorter one holds two bursts or three depending on
  where it starts.
- **Fan-out** rates are swept upwards in steps of about √2 while the server
  keeps up (at least 95 % of the offered rate delivered, no loss, p99 under
  1 s); a server's figure is the best round with p99 ≤ the objective and
  every message delivered once and in its publisher's order, and the last
  rounds show its capacity. A server that meets the objective at none of
  those rates gets rounds at half the lowest rate, a quarter, and so on down
  to 1,250 deliveries/s, until one meets it; if none does, its figure is
  below the lowest rate tried, and a ratio against it is a lower bound.
  Ratios are rounded down.
- **Kernel floor** (`roomcast-bench floor`, run first): the same machine
  with no server at all. One thread writes a message to each of 1,000
  loopback TCP sockets and another reads them with epoll, as a node's
  fan-out and the load generator do; then 2-byte pings go out in batches,
  one per 2 s tick like the gateway's heartbeat, and come back as 2-byte
  pongs. It bounds targets 1 and 4 from below: no gateway can drain a
  fan-out faster, or answer heartbeats for less CPU, than the kernel alone
  on the same cores.
- **Storm**: node A is killed while publishers on node B keep publishing;
  clients come back with exponential backoff and full jitter (roomcast: a
  resume with the room's offset and epoch; Socket.IO has no resume with the
  Redis adapter, so its clients connect and join again).

Reproduce with `make bench`; every size can be lowered through the
`BENCH_*` variables listed in `make help` and the Makefile for a shorter run.
";

/// One of issue #8's targets.
#[derive(Clone, Debug, Serialize)]
pub struct Target {
    pub number: u32,
    pub goal: String,
    pub measured: String,
    /// `None`: not run.
    pub met: Option<bool>,
}

impl Target {
    fn not_run(number: u32, goal: &str) -> Target {
        Target {
            number,
            goal: goal.into(),
            measured: "not run".into(),
            met: None,
        }
    }
}

/// The heartbeat interval the idle scenario runs with, in seconds.
const HEARTBEAT_INTERVAL_SECS: f64 = idle::HEARTBEAT_INTERVAL_SECS as f64;

/// The kernel floor as a section of the results.
pub fn floor_table(f: &FloorResult) -> String {
    let c = &f.config;
    let mut out = String::from("### Kernel floor of this machine\n\n");
    let _ = writeln!(
        out,
        "No server: one thread writes {} bytes to each of {} loopback TCP sockets \
         ({} rounds), another reads them with epoll; then {} sockets get a 2-byte \
         ping per {} ms tick ({} ticks) and an echo thread answers each with 2 bytes.\n",
        c.msg_bytes,
        count(c.conns as f64),
        c.rounds,
        count(c.ping_conns as f64),
        c.tick_ms,
        c.ping_ticks
    );
    out.push_str("| measurement | value |\n|---|---|\n");
    let rows = [
        (
            "writer CPU per write (the loopback receive runs inside it)",
            format!("{:.2} µs", f.send_us),
        ),
        (
            "reader CPU per message (epoll + read)",
            format!("{:.2} µs", f.recv_us),
        ),
        (
            "drain time of one fan-out (first write to last byte read)",
            format!(
                "p50 {} ms, p99 {} ms, max {} ms",
                ms(f.drain_p50_ms),
                ms(f.drain_p99_ms),
                ms(f.drain_max_ms)
            ),
        ),
        (
            "server CPU per ping sent and pong read",
            format!("{:.2} µs", f.pingpong_us),
        ),
        (
            "heartbeats of 18,000 connections every 25 s at that price",
            format!(
                "{:.2} % of a core",
                f.heartbeat_pct(18_000.0, HEARTBEAT_INTERVAL_SECS)
            ),
        ),
    ];
    for (what, value) in rows {
        let _ = writeln!(out, "| {what} | {value} |");
    }
    out.push('\n');
    out
}

fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn count(n: f64) -> String {
    let digits = (n.round() as u64).to_string();
    let head = match digits.len() % 3 {
        0 => 3,
        r => r,
    };
    let mut out = digits[..head].to_string();
    for group in digits.as_bytes()[head..].chunks(3) {
        out.push(',');
        out.push_str(std::str::from_utf8(group).unwrap_or_default());
    }
    out
}

pub fn idle_table(results: &[&IdleResult]) -> String {
    let mut out = String::from(
        "| server | deployment | connections (failed) | permessage-deflate | node RSS / conn | all processes RSS / conn | node CPU at rest | set-up |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for r in results {
        let _ = writeln!(
            out,
            "| {} | {} | {} ({}) | {} | {:.2} KiB | {:.2} KiB | {:.2} % of a core over {} s | {:.1} s |",
            r.label,
            r.deployment,
            count(r.setup.members_ok as f64),
            r.setup.members_failed,
            match &r.deflate {
                Some(d) if d.contains("permessage-deflate") => "yes",
                _ => "no",
            },
            r.node_rss_per_conn_kib,
            r.all_rss_per_conn_kib,
            r.node_cpu_pct,
            r.config.quiet_secs,
            r.setup.secs,
        );
    }
    out.push('\n');
    out
}

fn fanout_setup(results: &[&FanoutResult]) -> String {
    let Some(r) = results.first() else {
        return String::new();
    };
    let c = &r.config;
    format!(
        "{} room(s) × {} members, {} publisher(s), {}-byte payloads, {} node(s) with {}, {} s per round after {} s of warm-up, objective p99 ≤ {} ms.\n\n",
        c.rooms, count(c.members as f64), c.publishers, c.payload_bytes, c.nodes,
        match c.placement {
            crate::scenario::fanout::Placement::Spread => "the members of every room spread over all nodes",
            crate::scenario::fanout::Placement::Cross => "publishers on node 1, members on node 2",
        },
        c.secs, c.warmup_secs, c.slo_p99_ms
    )
}

pub fn fanout_summary(results: &[&FanoutResult]) -> String {
    let mut out = String::from(
        "| server | best deliveries/s meeting the objective | p50 | p99 | p99.9 | server CPU | server CPU per delivery | rounds run |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for r in results {
        match &r.best {
            Some(b) => {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} ms | {} ms | {} ms | {:.0} % | {:.2} µs | {} |",
                    r.label,
                    count(b.delivered_per_s),
                    ms(b.latency.p50_ms),
                    ms(b.latency.p99_ms),
                    ms(b.latency.p999_ms),
                    b.all_cpu_pct,
                    b.server_cpu_per_delivery_us(),
                    r.rounds.len()
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "| {} | none met it | | | | | | {} |",
                    r.label,
                    r.rounds.len()
                );
            }
        }
    }
    out
}

fn round_row(out: &mut String, label: &str, round: &FanoutRound) {
    let _ = writeln!(
        out,
        "| {} | {} | {} | {} | {} ms | {} ms | {} ms | {} ms | {} | {} | {} | {:.0} % | {:.0} % | {} |",
        label,
        if round.rate.fract() == 0.0 {
            count(round.rate)
        } else {
            format!("{:.1}", round.rate)
        },
        count(round.offered_per_s),
        count(round.delivered_per_s),
        ms(round.latency.p50_ms),
        ms(round.latency.p99_ms),
        ms(round.latency.p999_ms),
        ms(round.latency.max_ms),
        round.delivery.lost,
        round.delivery.duplicates,
        round.delivery.reordered,
        round.all_cpu_pct,
        round.client_cpu_pct,
        if round.meets_slo { "yes" } else { "no" }
    );
}

pub fn rounds_table(results: &[&FanoutResult]) -> String {
    let mut out = String::from(
        "| server | publishes/s | offered deliveries/s | delivered/s | p50 | p99 | p99.9 | max | lost | duplicated | out of order | server CPU | load generator CPU | objective met |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in results {
        for round in &r.rounds {
            round_row(&mut out, &r.label, round);
        }
    }
    out.push('\n');
    out
}

pub fn broadcast_table(results: &[&FanoutResult]) -> String {
    let mut out = String::from(
        "| server | deployment | members (failed) | broadcasts | deliveries / expected | lost | p50 | p99 | max | server CPU |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in results {
        for round in &r.rounds {
            let _ = writeln!(
                out,
                "| {} | {} | {} ({}) | {} | {} / {} | {} | {} ms | {} ms | {} ms | {:.0} % |",
                r.label,
                r.deployment,
                count(r.setup.members_ok as f64),
                r.setup.members_failed,
                round.delivery.published,
                count(round.delivery.received as f64),
                count(round.delivery.expected as f64),
                round.delivery.lost,
                ms(round.latency.p50_ms),
                ms(round.latency.p99_ms),
                ms(round.latency.max_ms),
                round.all_cpu_pct,
            );
        }
    }
    out.push('\n');
    out
}

pub fn storm_table(results: &[&StormResult]) -> String {
    let mut out = String::from(
        "| server | fault | clients (failed) | back / went down | all back after | back p50 / p99 | sessions resumed / fresh | rooms recovered / not | published | lost | duplicated | out of order | offset gaps / repeats |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in results {
        let d = &r.delivery;
        let _ = writeln!(
            out,
            "| {} | {} | {} ({}) | {} / {} | {} | {} / {} ms | {} / {} | {} / {} | {} | {} | {} | {} | {} / {} |",
            r.label,
            r.fault,
            count(r.setup.members_ok as f64),
            r.setup.members_failed,
            count(r.came_back as f64),
            count(r.went_down as f64),
            r.all_back_ms
                .map(|v| format!("{} ms", ms(v)))
                .unwrap_or_else(|| format!("not all ({} missing)", r.not_back)),
            ms(r.back_p50_ms),
            ms(r.back_p99_ms),
            r.sessions_resumed,
            r.fresh_sessions,
            r.rooms_recovered,
            r.rooms_not_recovered,
            count(d.published as f64),
            count(d.lost as f64),
            d.duplicates,
            d.reordered,
            d.offset_gaps,
            d.offset_duplicates,
        );
    }
    out.push('\n');
    out
}

/// roomcast's fan-out figure over a peer's: `peer` is the peer's best rate
/// meeting the objective, or the lowest rate it was tried at when it met
/// none (its figure is below that, and the ratio a lower bound); 0 when
/// the peer ran no round (`peer` infinite).
fn fanout_ratio(roomcast: f64, peer: f64) -> f64 {
    if peer > 0.0 && peer.is_finite() {
        roomcast / peer
    } else {
        0.0
    }
}

/// A ratio rounded down to two decimals, so one just under a threshold
/// never prints as the threshold.
fn times(r: f64) -> String {
    format!("{:.2}×", (r * 100.0).floor() / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_have_thousands_separators() {
        assert_eq!(count(0.0), "0");
        assert_eq!(count(999.0), "999");
        assert_eq!(count(1000.0), "1,000");
        assert_eq!(count(1234567.4), "1,234,567");
    }

    #[test]
    fn fanout_ratios_are_lower_bounds_against_a_peer_that_met_nothing() {
        // 39,990 against 20,000 is just under 2 and must not print as 2.
        assert!(fanout_ratio(39_990.0, 20_000.0) < 2.0);
        assert_eq!(times(39_990.0 / 20_000.0), "1.99×");
        assert_eq!(times(2.0), "2.00×");
        // A peer that met the objective down to 1,250/s: at least 32×.
        assert_eq!(fanout_ratio(40_000.0, 1_250.0), 32.0);
        // A peer that ran no round gives no ratio at all.
        assert_eq!(fanout_ratio(40_000.0, f64::INFINITY), 0.0);
    }

    #[test]
    fn an_empty_report_runs_no_target() {
        let report = RunReport::new("test".into());
        assert!(report
            .targets()
            .iter()
            .all(|t| t.met.is_none() || t.number == 6));
        let doc = report.document(&[]);
        assert!(doc.contains("## Targets (issue #8)"));
        assert!(doc.contains("`test`"));
        assert!(doc.contains("[benchmarks-history.md](benchmarks-history.md)"));
    }
}

//! `roomcast-bench`: roomcast's load generator, and the side-by-side
//! comparison with Socket.IO and socketioxide behind `make bench`.
//!
//! It starts the servers itself (see `roomcast_bench::peers`), drives them
//! from worker processes (itself, re-executed as `roomcast-bench worker`,
//! one per 15,000 connections), prints Markdown tables and writes JSON.
//! Loopback only; every run is bounded by `--max-secs`, and every process it
//! started is stopped when it ends, on success, error, panic or Ctrl-C.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use roomcast_bench::args::Args;
use roomcast_bench::peers::ServerKind;
use roomcast_bench::report::{Outcome, RunReport};
use roomcast_bench::scenario::{smoke, suite, Common};
use roomcast_bench::{system, worker};

const USAGE: &str = "\
usage: roomcast-bench <command> [--flag value]...

commands (each flag also reads the BENCH_* variable named in brackets):
  idle       [--conns 18000] [--room-size 10] [--msg-bytes 2048] [--quiet-secs 100]
             [--settle-secs 5] [--standalone]                      (BENCH_IDLE_*)
  fanout     [--nodes 2] [--rooms 10] [--members 100] [--publishers 10]
             [--rates 100,140,200,280,400,...,6400] [--secs 5] [--warmup-secs 1]
             [--payload-bytes 100] [--placement spread|cross] [--slo-p99-ms 10]
             [--min-rate 12.5] [--no-sweep] [--standalone]         (BENCH_FANOUT_*)
             BENCH_PUBLISH_KEYS=1: roomcast publishes carry an idempotency key
  cross      fanout with publishers on node 1 and members on node 2
             [--rooms 10] [--members 1000] [--publishers 10] [--rates 100]
             [--secs 10] [--slo-p99-ms 5]                          (BENCH_CROSS_*)
  broadcast  one room of every connection over many nodes
             [--conns 100000] [--nodes 6] [--count 5] [--interval-secs 2]
                                                                   (BENCH_BROADCAST_*)
  storm      [--clients 10000] [--rooms 100] [--rate 200] [--drain]
             [--before-secs 2] [--after-secs 3] [--backoff-base-ms 250]
             [--backoff-cap-ms 2000] [--give-up-secs 30]           (BENCH_STORM_*)
  floor      the kernel alone: a bare fan-out over loopback sockets and bare
             pings and pongs, the floor targets 1 and 4 are set against
             [--conns 1000] [--rounds 200] [--msg-bytes 150] [--ping-conns 1440]
             [--ping-ticks 4] [--tick-ms 2000] [--gap-ms 5]        (BENCH_FLOOR_*)
  smoke      a short fanout against one roomcast node; fails on loss (make bench-smoke)
             [--with-redis]                                        (BENCH_SMOKE_*)
  suite      every scenario for every server, then --doc FILE     (make bench)
             [--scenarios floor,idle,fanout,cross,storm,broadcast] (BENCH_SCENARIOS)
             [--servers all]                                       (BENCH_SERVERS)

common flags:
  --server roomcast|socketio|socketioxide|all[,…]  servers to run (BENCH_SERVERS;
                                   default roomcast, suite: all)
  --out FILE                       write the results as JSON
  --doc FILE                       suite: rewrite this Markdown file (docs/benchmarks.md)
  --workers N                      worker processes (default: one per 15,000 connections)
  --threads N                      runtime threads per worker (1)
  --connect-concurrency N          connections each worker sets up at once (128)
  --connect-timeout-ms N           longest one connection's set-up may take (30000)
  --no-deflate                     do not offer or enable permessage-deflate
                                   (fanout, cross, broadcast: --deflate 0|1 for that
                                   scenario alone, BENCH_<SCENARIO>_DEFLATE)
  --max-secs N                     stop everything after this long (3600)
  --worker-max-secs N              each worker process stops itself after this long (1800)

A flag not listed here is refused.

The servers' binaries come from ROOMCAST_BIN_DIR (default: this executable's
folder); the peers need scripts/bench-peers.sh first. Other ROOMCAST_*
variables in the environment reach the roomcast nodes (the benchmark's own
settings win). A run stops when the machine has less than BENCH_MIN_FREE_MIB
(1536) MiB of memory available.";

/// Whether `--key` appears in [`USAGE`] as a whole flag.
fn documented_flag(key: &str) -> bool {
    USAGE
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .any(|word| word.strip_prefix("--") == Some(key))
}

fn main() {
    let mut argv = std::env::args().skip(1);
    let command = argv.next().unwrap_or_else(|| "help".into());
    if command == "worker" {
        std::process::exit(worker::main());
    }
    if matches!(command.as_str(), "help" | "--help" | "-h") {
        println!("{USAGE}");
        return;
    }
    default_bin_dir();
    let args = match Args::parse(argv) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("roomcast-bench: {e}\n\n{USAGE}");
            std::process::exit(2);
        }
    };
    if args.keys().any(|k| k == "help") {
        println!("{USAGE}");
        return;
    }
    // A mistyped flag would otherwise be ignored and run a long benchmark
    // with the default in its place.
    if let Some(unknown) = args.keys().find(|k| !documented_flag(k)) {
        eprintln!("roomcast-bench: unknown flag --{unknown} (roomcast-bench help lists them)");
        std::process::exit(2);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = runtime.block_on(async {
        let max_secs: u64 = args.num("max-secs", "BENCH_MAX_SECS", 3600).unwrap_or(3600);
        // Whatever happens, the run's future is dropped before this block
        // ends, and with it every deployment and worker it started.
        tokio::select! {
            result = run(&command, &args) => match result {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("roomcast-bench: {e:#}");
                    1
                }
            },
            signal = interrupted() => {
                eprintln!("roomcast-bench: {signal}; stopping everything");
                130
            }
            _ = tokio::time::sleep(Duration::from_secs(max_secs)) => {
                eprintln!("roomcast-bench: --max-secs ({max_secs} s) reached; stopping everything");
                1
            }
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(2));
    std::process::exit(code);
}

/// Release runs keep the gateway next to this executable: use it unless
/// `ROOMCAST_BIN_DIR` says otherwise.
fn default_bin_dir() {
    if std::env::var_os("ROOMCAST_BIN_DIR").is_some() {
        return;
    }
    let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(PathBuf::from))
    else {
        return;
    };
    if dir.join("roomcast-gateway").exists() {
        // Single-threaded here: no runtime has started yet.
        std::env::set_var("ROOMCAST_BIN_DIR", dir);
    }
}

async fn interrupted() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "interrupted",
        _ = term.recv() => "terminated",
    }
}

async fn run(command: &str, args: &Args) -> Result<i32> {
    let common = Common::from_args(args)?;
    let line = std::iter::once("roomcast-bench".to_string())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    let mut report = RunReport::new(line);
    let out = args.get("out", "BENCH_OUT").map(PathBuf::from);
    let code = match command {
        "smoke" => {
            let (result, problems) = smoke::run(args, &common).await?;
            report.outcomes.push(Outcome::Fanout(result));
            print!("{}", report.markdown());
            if problems.is_empty() {
                println!("bench-smoke: passed");
                0
            } else {
                for p in &problems {
                    println!("bench-smoke: FAILED: {p}");
                }
                1
            }
        }
        "suite" => {
            let doc = args.get("doc", "BENCH_DOC");
            let mut write_doc = |report: &RunReport| {
                if let Some(doc) = &doc {
                    if let Err(e) = std::fs::write(doc, report.document(&suite::overrides())) {
                        eprintln!("writing {doc}: {e}");
                    }
                }
            };
            suite::run(args, &common, &mut report, &mut write_doc).await?;
            report.load_average_at_end = system::load_average();
            print!("{}", report.markdown());
            if let Some(doc) = args.get("doc", "BENCH_DOC") {
                let text = report.document(&suite::overrides());
                std::fs::write(&doc, text).map_err(|e| anyhow!("writing {doc}: {e}"))?;
                eprintln!("wrote {doc}");
            }
            for t in report.targets() {
                eprintln!(
                    "target {}: {} — {}",
                    t.number,
                    match t.met {
                        Some(true) => "met",
                        Some(false) => "MISSED",
                        None => "not run",
                    },
                    t.measured
                );
            }
            i32::from(!report.failures.is_empty())
        }
        "floor" => {
            report.floor = Some(suite::floor(args).await?);
            print!("{}", report.markdown());
            0
        }
        "idle" | "fanout" | "cross" | "broadcast" | "storm" => {
            let servers =
                ServerKind::parse_list(&args.string("server", "BENCH_SERVERS", "roomcast"))?;
            for kind in servers {
                match suite::run_one(command, kind, args, &common).await {
                    Ok(outcome) => report.outcomes.push(outcome),
                    Err(e) => {
                        eprintln!("{command} with {}: FAILED: {e:#}", kind.label());
                        report
                            .failures
                            .push((format!("{command} / {}", kind.label()), format!("{e:#}")));
                    }
                }
            }
            report.load_average_at_end = system::load_average();
            print!("{}", report.markdown());
            i32::from(!report.failures.is_empty())
        }
        other => bail!("unknown command {other:?}\n\n{USAGE}"),
    };
    if let Some(path) = out {
        report.write_json(&path)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::documented_flag;
    use std::path::Path;

    /// Every `--key` read through `Args` (`args.num("key"`, `args.flag(`,
    /// …) in the crate's sources, calls spread over lines included.
    fn flags_read(dir: &Path, out: &mut Vec<(String, String)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            // ws-compare has its own usage (and reads no environment).
            if path.ends_with("bin/ws-compare") {
                continue;
            }
            if path.is_dir() {
                flags_read(&path, out);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            // Tests (this one too) are not commands: a test module in a file
            // of its own, or the end of a file from `#[cfg(test)]` on.
            if path.ends_with("tests.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let text = text.split("#[cfg(test)]").next().unwrap_or_default();
            for method in ["num", "flag", "get", "string", "list"] {
                let call = format!("args.{method}(");
                for (at, _) in text.match_indices(&call) {
                    let rest = text[at + call.len()..].trim_start();
                    let Some(rest) = rest.strip_prefix('"') else {
                        continue; // not a literal key
                    };
                    let key = &rest[..rest.find('"').unwrap()];
                    out.push((key.to_string(), path.display().to_string()));
                }
            }
        }
    }

    #[test]
    fn every_flag_a_command_reads_is_in_the_usage() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut read = Vec::new();
        flags_read(&src, &mut read);
        // The scan finds the calls at all (a renamed method would empty it).
        assert!(read.len() > 40, "only {} flags found", read.len());
        assert!(read.iter().any(|(k, _)| k == "min-rate"));
        let missing: Vec<_> = read
            .iter()
            .filter(|(key, _)| !documented_flag(key))
            .collect();
        assert!(
            missing.is_empty(),
            "read but not in USAGE, so refused as unknown: {missing:?}"
        );
    }

    #[test]
    fn a_flag_is_documented_only_as_a_whole_word() {
        assert!(documented_flag("min-rate"));
        assert!(documented_flag("connect-timeout-ms"));
        assert!(!documented_flag("min"));
        assert!(!documented_flag("rate-min"));
    }
}

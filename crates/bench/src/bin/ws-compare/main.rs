//! `ws-compare`: measures WebSocket server libraries side by side on this machine.
//!
//! Four server variants are compared, all behind the same axum router:
//!
//! - `axum-default`: axum 0.8's built-in WebSocket (tungstenite), default config;
//! - `axum-small`: the same with 4 KiB read and write buffers;
//! - `yawc-default`: yawc with permessage-deflate at its default settings
//!   (context takeover both ways, level 6, no threshold, 8 KiB buffers);
//! - `yawc-tuned`: yawc with no context takeover both ways, a shared
//!   `DeflatePool`, a 256 B compression threshold, level 1 and 1 KiB buffers;
//! - `yawc-plain` (diagnostic, not in the default set): yawc without
//!   permessage-deflate and with 1 KiB buffers, to tell yawc's own cost from
//!   deflate's.
//!
//! Every client in this tool is yawc (the same for all variants) and offers
//! permessage-deflate, so the server alone decides whether it is negotiated.
//! What a browser would get is checked separately by a raw handshake that offers
//! `permessage-deflate; client_max_window_bits`, as Chrome and Firefox do.
//!
//! Sub-commands (run `ws-compare help` for the flags):
//!
//! - `server`: one server variant, printing `LISTENING <addr>` on stdout;
//! - `idle`: opens N connections from worker processes (source addresses
//!   127.0.0.1..127.0.0.10), exchanges one message each way on each, holds them,
//!   and reports the server's RSS growth per connection from `/proc/<pid>/status`;
//! - `echo`: C connections echoing small JSON messages as fast as possible;
//! - `fanout`: S subscribers, one publisher; the server delivers every published
//!   message to every subscriber through a bounded queue per subscriber;
//! - `all`: all of the above for every variant, printed as a Markdown table.
//!
//! Every run is bounded in time: spawned servers and workers exit when their
//! parent closes their stdin, and each has a hard time limit of its own.
//!
//! The modules, one concern each: `variant` (the variants and their
//! options), `server` (the router and the `server` command), `process` (the
//! server measured and the processes' lifetimes), `client` (connections and
//! messages), `idle`, and `throughput` (`echo` and `fanout`). Arguments,
//! `/proc` readings and the deflate probe are the bench library's.

mod client;
mod idle;
mod process;
mod server;
mod throughput;
mod variant;

use std::time::Duration;

use anyhow::{anyhow, Result};
use roomcast_bench::args::{Args, NO_ENV};

use client::describe_deflate;
use idle::{idle_client_command, idle_command, run_idle};
use process::Target;
use server::server_command;
use throughput::{echo_command, fanout_command, run_echo, run_fanout};
use variant::Impl;

fn main() {
    let mut argv = std::env::args().skip(1);
    let command = argv.next().unwrap_or_else(|| "help".to_owned());
    let args = match Args::parse(argv) {
        Ok(args) => args,
        Err(err) => {
            eprintln!("ws-compare: {err}\n\n{USAGE}");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let outcome = runtime.block_on(async move {
        match command.as_str() {
            "server" => server_command(&args).await,
            "idle" => idle_command(&args).await,
            "idle-client" => idle_client_command(&args).await,
            "echo" => echo_command(&args).await,
            "fanout" => fanout_command(&args).await,
            "all" => all_command(&args).await,
            "help" | "--help" | "-h" => {
                println!("{USAGE}");
                Ok(())
            }
            other => Err(anyhow!("unknown command {other:?}")),
        }
    });
    // Connection tasks may still be parked; leave without waiting for them.
    runtime.shutdown_timeout(Duration::from_millis(100));
    if let Err(err) = outcome {
        eprintln!("ws-compare: {err:#}");
        std::process::exit(1);
    }
}

const USAGE: &str = "\
usage: ws-compare <command> [--flag value]...

commands:
  server  --impl IMPL [--addr 127.0.0.1:0] [--max-secs 900] [--exit-on-eof]
  idle    --impl IMPL | --addr ADDR --server-pid PID
          [--conns 10000] [--procs 2] [--msg-bytes 512] [--settle-secs 3]
  echo    --impl IMPL | --addr ADDR --server-pid PID
          [--conns 100] [--secs 10] [--payload-bytes 100]
  fanout  --impl IMPL | --addr ADDR --server-pid PID
          [--subs 1000] [--secs 10] [--payload-bytes 100]
  all     [--impls axum-default,axum-small,yawc-default,yawc-tuned]
          [--conns 10000] [--procs 2] [--msg-bytes 512] [--echo-conns 100]
          [--subs 1000] [--secs 10] [--payload-bytes 100]
          [--skip-idle] [--skip-echo] [--skip-fanout]

IMPL is one of axum-default, axum-small, yawc-default, yawc-tuned, or the
diagnostic yawc-plain (yawc without permessage-deflate, 1 KiB buffers).
--msg-bytes 0 makes `idle` hold connections without exchanging a message.
Only loopback addresses are used; every run stops by itself.";

/// `all`: every measurement of every variant asked for, then a Markdown table.
async fn all_command(args: &Args) -> Result<()> {
    let impls = match args.get("impls", NO_ENV) {
        Some(list) => list
            .split(',')
            .map(Impl::parse)
            .collect::<Result<Vec<_>>>()?,
        None => Impl::ALL.to_vec(),
    };
    let conns = args.num("conns", NO_ENV, 10_000)?;
    let procs = args.num("procs", NO_ENV, 2)?;
    let msg_bytes = args.num("msg-bytes", NO_ENV, 512)?;
    let echo_conns = args.num("echo-conns", NO_ENV, 100)?;
    let subs = args.num("subs", NO_ENV, 1000)?;
    let secs = args.num("secs", NO_ENV, 10)?;
    let payload_bytes = args.num("payload-bytes", NO_ENV, 100)?;
    let mut rows = Vec::new();
    for imp in impls {
        eprintln!("== {} ==", imp.name());
        let mut row = vec![imp.name().to_owned(), String::new()];
        let mut deflate = None;
        if args.flag("skip-idle", NO_ENV) {
            row.push("-".into());
        } else {
            let target = Target::spawn(imp).await?;
            let result = run_idle(&target, conns, procs, msg_bytes, Duration::from_secs(3)).await;
            target.stop().await;
            let result = result?;
            result.print();
            row.push(format!(
                "{:.1} ({} conns)",
                result.per_conn_kib(),
                result.conns
            ));
            deflate = Some(result.deflate);
        }
        for (skip, fanout) in [("skip-echo", false), ("skip-fanout", true)] {
            if args.flag(skip, NO_ENV) {
                row.push("-".into());
                continue;
            }
            let target = Target::spawn(imp).await?;
            let result = if fanout {
                run_fanout(&target, subs, secs, payload_bytes).await
            } else {
                run_echo(&target, echo_conns, secs, payload_bytes).await
            };
            target.stop().await;
            let result = result?;
            eprintln!(
                "{} {}: {:.0}/s, server CPU {:.2} us each, {} errors, load {}",
                if fanout { "fanout" } else { "echo" },
                result.label,
                result.per_sec,
                result.server_cpu_us,
                result.errors,
                result.load
            );
            row.push(format!(
                "{:.0} ({:.2} µs CPU)",
                result.per_sec, result.server_cpu_us
            ));
            deflate.get_or_insert(result.deflate);
        }
        row[1] = deflate.map_or_else(|| "?".to_owned(), |d| describe_deflate(&d));
        rows.push(row);
    }
    println!();
    println!(
        "| variant | permessage-deflate negotiated | server RSS per idle connection, KiB | echo msg/s ({echo_conns} conns, {payload_bytes} B) | fan-out deliveries/s ({subs} subs, {payload_bytes} B) |"
    );
    println!("|---|---|---|---|---|");
    for row in rows {
        println!("| {} |", row.join(" | "));
    }
    Ok(())
}

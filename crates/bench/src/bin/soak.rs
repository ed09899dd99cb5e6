//! `roomcast-soak`: churn against a two-node cluster for a long time and
//! check that nothing leaks and nothing acknowledged is lost.
//!
//! It starts Redis, the presence service and two gateways (release
//! binaries, through the shared test harness), keeps two *witness* clients
//! subscribed to every room, and runs churners that connect, join, publish,
//! drop their connection (forcing a resume), leave and disconnect, for
//! `--minutes`. Every 10 s it samples each gateway's RSS, open file
//! descriptors and runtime tasks. At the end it checks:
//! - RSS growth after warm-up, by a least-squares slope, under the bound;
//! - file descriptors and tasks back at their quiescent baseline;
//! - every acknowledged publish received by both witnesses, in order, once.
//!
//! Loopback only; everything it starts stops when it ends.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use roomcast_client::{Backoff, Client, Event};
use roomcast_testkit::redis::RedisServer;
use roomcast_testkit::{http_request, rss_kib, Gateway, PresenceService};
use serde_json::json;

struct Args {
    minutes: f64,
    warmup_minutes: f64,
    churners: usize,
    rooms: usize,
    max_rss_kib_per_hour: f64,
    out: String,
}

fn parse_args() -> Args {
    let mut args = Args {
        minutes: 30.0,
        warmup_minutes: 5.0,
        churners: 60,
        rooms: 10,
        max_rss_kib_per_hour: 1024.0,
        out: "target/soak/soak.json".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_default();
        match flag.as_str() {
            "--minutes" => args.minutes = value.parse().expect("--minutes"),
            "--warmup-minutes" => args.warmup_minutes = value.parse().expect("--warmup-minutes"),
            "--churners" => args.churners = value.parse().expect("--churners"),
            "--rooms" => args.rooms = value.parse().expect("--rooms"),
            "--max-rss-kib-per-hour" => {
                args.max_rss_kib_per_hour = value.parse().expect("--max-rss-kib-per-hour")
            }
            "--out" => args.out = value,
            other => {
                panic!("unknown flag {other}; see the doc comment of crates/bench/src/bin/soak.rs")
            }
        }
    }
    args
}

#[derive(Clone, Copy)]
struct Sample {
    at_s: f64,
    rss_kib: u64,
    fds: u64,
    tasks: u64,
    connections: u64,
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

fn sample(gw: &Gateway, started: Instant) -> Sample {
    let pid = gw.process.pid();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    let text = http_request(gw.addr, "GET", "/metrics", &[], "")
        .map(|r| r.1)
        .unwrap_or_default();
    Sample {
        at_s: started.elapsed().as_secs_f64(),
        rss_kib: rss_kib(pid).unwrap_or(0),
        fds,
        tasks: metric(&text, "roomcast_tasks"),
        connections: metric(&text, "roomcast_connections"),
    }
}

/// Least-squares slope of RSS over time, in KiB per hour.
fn rss_slope(samples: &[Sample]) -> f64 {
    let n = samples.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let mean_t = samples.iter().map(|s| s.at_s).sum::<f64>() / n;
    let mean_r = samples.iter().map(|s| s.rss_kib as f64).sum::<f64>() / n;
    let cov: f64 = samples
        .iter()
        .map(|s| (s.at_s - mean_t) * (s.rss_kib as f64 - mean_r))
        .sum();
    let var: f64 = samples.iter().map(|s| (s.at_s - mean_t).powi(2)).sum();
    if var == 0.0 {
        0.0
    } else {
        cov / var * 3600.0
    }
}

type Acked = Arc<Mutex<BTreeMap<String, BTreeSet<u64>>>>;

async fn client(urls: &[String]) -> Option<(Client, roomcast_client::Events)> {
    Client::builder()
        .urls(urls.to_vec())
        .backoff(Backoff {
            base: Duration::from_millis(50),
            cap: Duration::from_secs(1),
            max_attempts: Some(20),
        })
        .connect()
        .await
        .ok()
}

async fn churner(urls: Vec<String>, rooms: usize, until: Instant, acked: Acked) {
    while Instant::now() < until {
        let Some((c, mut events)) = client(&urls).await else {
            continue;
        };
        // Drain events so the client never backs up.
        let drain = tokio::spawn(async move { while events.recv().await.is_some() {} });
        let mine: Vec<String> = {
            let mut rng = rand::thread_rng();
            (0..rng.gen_range(1..=3))
                .map(|_| format!("soak-{}", rng.gen_range(0..rooms)))
                .collect()
        };
        for room in &mine {
            let _ = c.join(room.clone()).await;
        }
        let rounds: usize = rand::thread_rng().gen_range(2..8);
        for round in 0..rounds {
            let room = &mine[round % mine.len()];
            if let Ok(offset) = c
                .publish(room.clone(), json!({"round": round, "pad": "x".repeat(64)}))
                .await
            {
                acked
                    .lock()
                    .unwrap()
                    .entry(room.clone())
                    .or_default()
                    .insert(offset);
            }
            let (drop_it, pause) = {
                let mut rng = rand::thread_rng();
                (rng.gen_bool(0.15), rng.gen_range(100..600))
            };
            if drop_it {
                // An abrupt drop: the client reconnects and resumes.
                c.drop_connection_for_test(Duration::from_millis(50)).await;
            }
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        let (leave, pause) = {
            let mut rng = rand::thread_rng();
            (rng.gen_bool(0.5), rng.gen_range(50..300))
        };
        if leave {
            let _ = c.leave(mine[0].clone()).await;
        }
        c.close().await;
        drain.abort();
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// A client that stays in every room and records each offset it receives.
async fn witness(url: String, rooms: usize) -> (Client, Arc<Mutex<BTreeMap<String, Vec<u64>>>>) {
    let (c, mut events) = client(&[url]).await.expect("witness connects");
    for r in 0..rooms {
        c.join(format!("soak-{r}")).await.expect("witness joins");
    }
    let seen: Arc<Mutex<BTreeMap<String, Vec<u64>>>> = Arc::default();
    let record = seen.clone();
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            if let Event::Message(m) = event {
                record
                    .lock()
                    .unwrap()
                    .entry(m.room)
                    .or_default()
                    .push(m.offset);
            }
        }
    });
    (c, seen)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = parse_args();
    let redis = RedisServer::start();
    let presence = PresenceService::start(&redis.url(), &[]);
    let env = |id: &'static str| {
        vec![
            ("ROOMCAST_REDIS__URL", redis.url()),
            ("ROOMCAST_PRESENCE__URL", presence.url()),
            ("ROOMCAST_AUTH__RESUME_SECRET", "soak".to_string()),
            ("ROOMCAST_NODE__ID", id.to_string()),
            ("ROOMCAST_HISTORY__SIZE", "10000".to_string()),
            (
                "ROOMCAST_LOG__LEVEL",
                "warn,roomcast_gateway=info".to_string(),
            ),
        ]
    };
    let start = |id: &'static str| {
        let vars = env(id);
        let refs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Gateway::start(&refs)
    };
    let nodes = [start("soak-a"), start("soak-b")];
    let urls: Vec<String> = nodes.iter().map(|g| g.ws_url()).collect();
    let (_w1, seen1) = witness(urls[0].clone(), args.rooms).await;
    let (_w2, seen2) = witness(urls[1].clone(), args.rooms).await;

    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let baseline: Vec<Sample> = nodes.iter().map(|g| sample(g, started)).collect();
    let until = started + Duration::from_secs_f64(args.minutes * 60.0);
    let acked: Acked = Arc::default();
    let mut tasks = Vec::new();
    for i in 0..args.churners {
        let mut urls = urls.clone();
        urls.rotate_left(i % 2);
        tasks.push(tokio::spawn(churner(
            urls,
            args.rooms,
            until,
            acked.clone(),
        )));
    }
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(), Vec::new()];
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_secs(10)).await;
        for (i, g) in nodes.iter().enumerate() {
            let s = sample(g, started);
            samples[i].push(s);
        }
        let s = &samples[0][samples[0].len() - 1];
        eprintln!(
            "[{:>6.0}s] a: rss {} KiB, fds {}, tasks {}, conns {}; acked {}",
            s.at_s,
            s.rss_kib,
            s.fds,
            s.tasks,
            s.connections,
            acked
                .lock()
                .unwrap()
                .values()
                .map(|v| v.len())
                .sum::<usize>()
        );
    }
    for t in tasks {
        let _ = t.await;
    }
    // Quiesce: churners gone, witnesses catch up, and idle keep-alive
    // connections to the presence service are reaped (30 s idle timeout;
    // hyper's reaper runs on that period, so allow two), so what is left
    // over is a leak, not a pool.
    tokio::time::sleep(Duration::from_secs(70)).await;
    let finals: Vec<Sample> = nodes.iter().map(|g| sample(g, started)).collect();

    let acked = acked.lock().unwrap().clone();
    let mut lost = 0usize;
    let mut out_of_order = 0usize;
    for seen in [&seen1, &seen2] {
        let seen = seen.lock().unwrap();
        for (room, offsets) in &acked {
            let got = seen.get(room).cloned().unwrap_or_default();
            let got_set: BTreeSet<u64> = got.iter().copied().collect();
            lost += offsets.iter().filter(|o| !got_set.contains(o)).count();
            out_of_order += got.windows(2).filter(|w| w[1] != w[0] + 1).count();
        }
    }
    let warm_s = args.warmup_minutes * 60.0;
    let mut report = Vec::new();
    let mut ok = lost == 0 && out_of_order == 0;
    for (i, g) in nodes.iter().enumerate() {
        let after_warm: Vec<Sample> = samples[i]
            .iter()
            .copied()
            .filter(|s| s.at_s >= warm_s)
            .collect();
        let slope = rss_slope(&after_warm);
        let b = baseline[i];
        let f = finals[i];
        let fd_growth = f.fds as i64 - b.fds as i64;
        let task_growth = f.tasks as i64 - b.tasks as i64;
        ok &= slope <= args.max_rss_kib_per_hour && fd_growth <= 2 && task_growth <= 2;
        report.push(json!({
            "node": i, "pid": g.process.pid(),
            "rss_kib_baseline": b.rss_kib, "rss_kib_final": f.rss_kib,
            "rss_kib_per_hour_after_warmup": slope,
            "fds_baseline": b.fds, "fds_final": f.fds,
            "tasks_baseline": b.tasks, "tasks_final": f.tasks,
            "samples": samples[i].len(),
        }));
    }
    let total_acked: usize = acked.values().map(|v| v.len()).sum();
    let summary = json!({
        "minutes": args.minutes, "warmup_minutes": args.warmup_minutes,
        "churners": args.churners, "rooms": args.rooms,
        "acked_messages": total_acked, "lost_acked": lost, "gaps_or_duplicates": out_of_order,
        "nodes": report, "ok": ok,
    });
    if let Some(dir) = std::path::Path::new(&args.out).parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::write(
        &args.out,
        serde_json::to_string_pretty(&summary).unwrap_or_default(),
    );
    println!(
        "{}",
        serde_json::to_string_pretty(&summary).unwrap_or_default()
    );
    // `process::exit` skips destructors: stop every child process first.
    drop(nodes);
    drop(presence);
    drop(redis);
    std::process::exit(if ok { 0 } else { 1 });
}

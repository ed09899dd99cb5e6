//! What `/proc` says about processes and the machine: resident memory, CPU
//! time, and a one-line description of the machine for reports.

use std::process::Command;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch (the clock every process on this
/// machine shares, so a timestamp written by one process can be compared with
/// another's).
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// `VmRSS` of a process in KiB, or `None` when it is gone.
pub fn rss_kib(pid: u32) -> Option<u64> {
    roomcast_testkit::rss_kib(pid)
}

/// Clock ticks per second of `/proc/PID/stat` times (USER_HZ, 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

/// User + system CPU time of a process in seconds.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the rest follows its ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / TICKS_PER_SEC)
}

/// CPU used by a set of processes over an interval, as a percentage of one
/// core.
pub struct CpuMeter {
    pids: Vec<u32>,
    start: Vec<f64>,
    started: Instant,
}

impl CpuMeter {
    pub fn start(pids: &[u32]) -> CpuMeter {
        CpuMeter {
            pids: pids.to_vec(),
            start: pids.iter().map(|&p| cpu_secs(p).unwrap_or(0.0)).collect(),
            started: Instant::now(),
        }
    }

    /// Per process, then the sum: % of one core since `start`.
    pub fn percent(&self) -> (Vec<f64>, f64) {
        let wall = self.started.elapsed().as_secs_f64().max(1e-3);
        let per: Vec<f64> = self
            .pids
            .iter()
            .zip(&self.start)
            .map(|(&p, &s)| (cpu_secs(p).unwrap_or(s) - s).max(0.0) / wall * 100.0)
            .collect();
        let sum = per.iter().sum();
        (per, sum)
    }
}

/// Sum of the resident memory of several processes, KiB.
pub fn rss_sum_kib(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|&p| rss_kib(p)).sum()
}

/// `MemAvailable` of the machine, MiB.
pub fn mem_available_mib() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib / 1024)
}

/// The 1, 5 and 15 minute load averages.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// "N × CPU model, M GiB, kernel" from /proc/cpuinfo, /proc/meminfo and uname.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map(|kib| kib / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let uname = command_line("uname", &["-srm"]);
    format!("{cores} × {model}, {mem_gib:.0} GiB RAM, {uname}")
}

/// Today's date and time, UTC, as `date -u` prints it in ISO 8601.
pub fn utc_now() -> String {
    command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
}

fn command_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

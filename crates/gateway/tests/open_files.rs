//! Every client is a descriptor: the node lifts a low soft limit on open
//! files to the hard limit at startup, and warns, naming the limit, when
//! even that is below `limits.max_connections`.

use std::path::PathBuf;
use std::time::Duration;

use roomcast_testkit::{binary, wait_for_listen_line, Process};

/// (soft, hard) "Max open files" of a process, from `/proc/PID/limits`.
fn open_files_limits(pid: &str) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (numbers[0], numbers[1])
}

/// Starts the node under `ulimit -S -n 256` with `max_connections`.
fn start_with_low_soft_limit(max_connections: u64) -> Process {
    let gateway = binary("roomcast-gateway");
    let mut process = Process::spawn(
        "gateway",
        &PathBuf::from("/bin/sh"),
        &[
            "-c",
            r#"ulimit -S -n 256 && exec "$0""#,
            gateway.to_str().unwrap(),
        ],
        &[
            ("ROOMCAST_LISTEN", "127.0.0.1:0".to_string()),
            (
                "ROOMCAST_LIMITS__MAX_CONNECTIONS",
                max_connections.to_string(),
            ),
        ],
    );
    wait_for_listen_line(&mut process, Duration::from_secs(20));
    process
}

#[test]
fn a_low_soft_limit_is_lifted_and_one_below_max_connections_is_named() {
    let (_, hard) = open_files_limits("self");
    assert!(
        hard > 256,
        "this test needs a hard limit above 256, not {hard}"
    );

    let above = start_with_low_soft_limit(hard + 1);
    assert_eq!(
        open_files_limits(&above.pid().to_string()),
        (hard, hard),
        "the soft limit was not lifted"
    );
    let output = above.output();
    assert!(
        output.contains("open-file limit") && output.contains(&format!("open_files={hard}")),
        "{output}"
    );

    let below = start_with_low_soft_limit(100);
    assert_eq!(open_files_limits(&below.pid().to_string()), (hard, hard));
    assert!(
        !below.output().contains("open-file limit"),
        "{}",
        below.output()
    );
}

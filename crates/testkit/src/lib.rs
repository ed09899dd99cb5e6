//! The integration-test harness, shared by every crate's tests.
//!
//! Tests run the real thing: the `roomcast-gateway` binary (and later the
//! presence service and `redis-server`) as child processes on free loopback
//! ports. Each [`Process`] is killed when dropped, so a failing test never
//! leaves servers behind. Binaries are built once by `make test` before the
//! tests start; when a test is run on its own, the harness builds them.

pub mod proxy;
pub mod redis;
pub mod stalled;
pub mod ws;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on 127.0.0.1")
}

/// The workspace root (the folder with the top-level Cargo.toml).
///
/// Read at run time: cargo and nextest set `CARGO_MANIFEST_DIR` for the
/// test being run (every crate sits two levels below the root). Cargo
/// shares the build of an unchanged crate between checkouts at other paths
/// that use the same target dir (`.ci/run` keeps one outside the clone),
/// so the path baked in at compile time may name a checkout that is gone.
pub fn workspace_root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Path of a workspace binary in the debug profile. Each binary is built
/// (`cargo build -p NAME --bin NAME`, a no-op when fresh) once per test
/// process, unless `ROOMCAST_TEST_NO_BUILD` is set (`make test` builds first).
///
/// `ROOMCAST_BIN_DIR` points at another folder of binaries (a release
/// build, for soak runs); nothing is built then.
pub fn binary(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("ROOMCAST_BIN_DIR") {
        let path = PathBuf::from(dir).join(name);
        assert!(path.exists(), "{} does not exist", path.display());
        return path;
    }
    let path = target_dir().join("debug").join(name);
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if !built.iter().any(|b| b == name) && std::env::var_os("ROOMCAST_TEST_NO_BUILD").is_none() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "-p", name, "--bin", name])
            .current_dir(workspace_root())
            .status()
            .expect("cargo build");
        assert!(status.success(), "cargo build -p {name} failed");
        built.push(name.to_string());
    }
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// A child process killed on drop, with its output kept in a log file.
pub struct Process {
    child: Child,
    pub name: String,
    pub log: PathBuf,
}

impl Process {
    /// Spawns `program` with `env`, output going to a temporary log file.
    pub fn spawn(name: &str, program: &PathBuf, args: &[&str], env: &[(&str, String)]) -> Process {
        let log = std::env::temp_dir().join(format!(
            "roomcast-test-{}-{}-{}.log",
            name,
            std::process::id(),
            free_port()
        ));
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let mut cmd = Command::new(program);
        // The harness's own settings are not the child's configuration.
        cmd.env_remove("ROOMCAST_BIN_DIR")
            .env_remove("ROOMCAST_TEST_NO_BUILD")
            .env_remove("ROOMCAST_KEEP_LOGS");
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
        Process {
            child,
            name: name.to_string(),
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process's output so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal (`"TERM"`, `"KILL"`, `"STOP"`, `"CONT"`, `"HUP"`).
    pub fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status();
    }

    /// Waits up to `timeout` for the process to exit; its exit code if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<Option<i32>> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status.code());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- log of {} ---\n{}", self.name, self.output());
        } else if std::env::var_os("ROOMCAST_KEEP_LOGS").is_some() {
            eprintln!("log of {} kept in {}", self.name, self.log.display());
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// A running `roomcast-gateway` on a free loopback port.
pub struct Gateway {
    pub process: Process,
    pub addr: SocketAddr,
}

impl Gateway {
    /// Starts a single node (in-memory mode unless `env` sets a Redis URL).
    /// Unless `env` sets `ROOMCAST_LISTEN`, the node binds port 0 and the
    /// harness reads the address it got from its log, so parallel tests
    /// never race for a port. The API key defaults to `test-key`.
    pub fn start(env: &[(&str, &str)]) -> Gateway {
        let mut vars: Vec<(&str, String)> = vec![
            ("ROOMCAST_LISTEN", "127.0.0.1:0".to_string()),
            ("ROOMCAST_API__KEY", "test-key".to_string()),
            ("ROOMCAST_LOG__LEVEL", "info,roomcast=debug".to_string()),
        ];
        for (k, v) in env {
            vars.retain(|(key, _)| key != k);
            vars.push((k, v.to_string()));
        }
        let mut process = Process::spawn("gateway", &binary("roomcast-gateway"), &[], &vars);
        let addr = wait_for_listen_line(&mut process, Duration::from_secs(20));
        let mut gw = Gateway { process, addr };
        gw.wait_healthy(Duration::from_secs(20));
        gw
    }

    /// `ws://…/ws` of this node.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// `http://…` of this node.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The value of the first `/metrics` line that starts with
    /// `line_start` (a name, or a name with its labels); 0 if none does.
    pub fn metric(&self, line_start: &str) -> u64 {
        metric(self.addr, line_start)
    }

    fn wait_healthy(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if !self.process.is_running() {
                panic!("gateway exited at startup:\n{}", self.process.output());
            }
            if let Ok((200, _)) = http_request(self.addr, "GET", "/healthz", &[], "") {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("gateway not healthy in time:\n{}", self.process.output());
    }
}

/// A running `roomcast-presence` on a free loopback port.
pub struct PresenceService {
    pub process: Process,
    pub addr: SocketAddr,
}

impl PresenceService {
    /// Starts the presence service against `redis_url`, binding port 0
    /// unless `env` sets `ROOMCAST_LISTEN`.
    pub fn start(redis_url: &str, env: &[(&str, &str)]) -> PresenceService {
        let mut vars: Vec<(&str, String)> = vec![
            ("ROOMCAST_LISTEN", "127.0.0.1:0".to_string()),
            ("ROOMCAST_REDIS__URL", redis_url.to_string()),
            ("ROOMCAST_LOG__LEVEL", "info".to_string()),
        ];
        for (k, v) in env {
            vars.retain(|(key, _)| key != k);
            vars.push((k, v.to_string()));
        }
        let mut process = Process::spawn("presence", &binary("roomcast-presence"), &[], &vars);
        let addr = wait_for_listen_line(&mut process, Duration::from_secs(20));
        PresenceService { process, addr }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The value of the first `/metrics` line starting with `line_start`
    /// (0 when there is none).
    pub fn metric(&self, line_start: &str) -> u64 {
        metric(self.addr, line_start)
    }
}

/// The value of the first line of `addr`'s `/metrics` that starts with
/// `line_start`, 0 when there is none.
fn metric(addr: SocketAddr, line_start: &str) -> u64 {
    let (_, text) = http_request(addr, "GET", "/metrics", &[], "").expect("GET /metrics");
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The example application backend (`examples/backend/backend.py`): it
/// answers the proxies and records the calls and webhooks it receives.
pub struct HookBackend {
    pub process: Process,
    pub addr: SocketAddr,
}

impl HookBackend {
    /// Starts the backend on a free port; `webhook_secret` is what it checks
    /// webhook signatures with, `slow_seconds` how long its "slow" answers take.
    pub fn start(webhook_secret: &str, slow_seconds: f64) -> HookBackend {
        let script = workspace_root().join("examples/backend/backend.py");
        let script = script.to_string_lossy().to_string();
        let slow = slow_seconds.to_string();
        let args = [
            script.as_str(),
            "--port",
            "0",
            "--webhook-secret",
            webhook_secret,
            "--slow-seconds",
            slow.as_str(),
        ];
        let mut process = Process::spawn("backend", &PathBuf::from("python3"), &args, &[]);
        let addr = wait_for_listen_line(&mut process, Duration::from_secs(20));
        HookBackend { process, addr }
    }

    /// `http://host:port` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// GET `path` (`/calls`, `/webhooks`) as JSON.
    pub fn get(&self, path: &str) -> serde_json::Value {
        let (status, body) = http_request(self.addr, "GET", path, &[], "").expect("backend GET");
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).expect("backend JSON")
    }

    /// POST a control request (`/control/reset`, `/control/webhook-failures`).
    pub fn control(&self, path: &str, body: &str) {
        let (status, text) =
            http_request(self.addr, "POST", path, &[], body).expect("backend POST");
        assert_eq!(status, 200, "{path}: {text}");
    }

    /// The proxy calls of one kind (`connect`, `join`, `publish`, `rpc`) seen so far.
    pub fn calls(&self, kind: &str) -> Vec<serde_json::Value> {
        self.get("/calls")
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|c| c["kind"] == kind)
            .collect()
    }
}

/// Reads the `listening on http://ADDR` line a server logs at startup.
pub fn wait_for_listen_line(process: &mut Process, timeout: Duration) -> SocketAddr {
    const MARK: &str = "listening on http://";
    let deadline = Instant::now() + timeout;
    loop {
        let out = process.output();
        if let Some(i) = out.find(MARK) {
            let rest = &out[i + MARK.len()..];
            let end = rest
                .find(|c: char| c.is_whitespace() || c == '"' || c == ')')
                .unwrap_or(rest.len());
            if let Ok(addr) = rest[..end].trim_end_matches('/').parse() {
                return addr;
            }
        }
        if !process.is_running() {
            panic!("{} exited at startup:\n{out}", process.name);
        }
        if Instant::now() >= deadline {
            panic!(
                "{} did not report its address in time:\n{out}",
                process.name
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Publishes `count` messages to `room` through `POST /api/publish` of the
/// node at `addr` (API key `test-key`), from a thread of its own: message
/// `i` is `{"i": i, "pad": "xx…"}` with a pad of `sizes[i % sizes.len()]`
/// bytes; a 10 ms pause every 20 messages lets readers fall behind and
/// catch up.
pub fn publish_padded_from_a_thread(
    addr: SocketAddr,
    room: &'static str,
    count: u64,
    sizes: &'static [usize],
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for i in 0..count {
            let size = sizes[(i as usize) % sizes.len()];
            let body = format!(
                r#"{{"room":"{room}","data":{{"i":{i},"pad":"{}"}}}}"#,
                "x".repeat(size)
            );
            let auth = ("Authorization", "Bearer test-key");
            let (status, answer) =
                http_request(addr, "POST", "/api/publish", &[auth], &body).unwrap();
            assert_eq!(status, 200, "{answer}");
            if i % 20 == 0 {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    })
}

/// A minimal blocking HTTP/1.1 client for tests: returns (status, body).
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<(u16, String)> {
    http_exchange(addr, method, path, headers, body).map(|r| (r.status, r.body))
}

/// An answer of [`http_exchange`].
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Header lines as (lower-case name, value), in order.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    /// Every value of the header `name` (lower case).
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// [`http_request`], answering the response's headers too.
pub fn http_exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<HttpResponse> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response: {text}")))?;
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let headers: Vec<(String, String)> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

/// [`http_request`] from the local address `local` (another loopback
/// address, say `127.0.0.3`, so that the request does not count against
/// the per-address limit of `127.0.0.1`), on the current runtime.
pub async fn http_request_from(
    local: std::net::IpAddr,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(local, 0))?;
    let mut stream = tokio::time::timeout(Duration::from_secs(2), socket.connect(addr))
        .await
        .map_err(|_| std::io::Error::other("connect timed out"))??;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .map_err(|_| std::io::Error::other("response timed out"))??;
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response: {text}")))?;
    let body = match text.split_once("\r\n\r\n") {
        Some((head, rest))
            if head
                .to_ascii_lowercase()
                .contains("transfer-encoding: chunked") =>
        {
            dechunk(rest)
        }
        Some((_, rest)) => rest.to_string(),
        None => String::new(),
    };
    Ok((status, body))
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

/// Polls `check` every 20 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Resident set size of a process in KiB (from /proc).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

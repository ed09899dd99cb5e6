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

use std::{
    net::{Ipv4Addr, SocketAddr},
    process::Stdio,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, RwLock,
    },
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use axum::{
    extract::{
        ws::{Message, WebSocket as AxumWebSocket, WebSocketUpgrade},
        State,
    },
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
    serve::ListenerExt,
    Router,
};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use roomcast_bench::args::{Args, NO_ENV};
use roomcast_bench::load::filler;
use roomcast_bench::net::{connect_from, probe_deflate};
use roomcast_bench::system::{cpu_secs, load_average, rss_kib, rss_sum_kib};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, BufReader},
    net::{TcpListener, TcpStream},
    process::{Child, ChildStdin, Command},
    sync::{mpsc, Semaphore},
    task::JoinHandle,
    time::{sleep, timeout},
};
use yawc::{
    CompressionLevel, DeflatePool, Frame, HttpWebSocket, IncomingUpgrade, OpCode, Options,
    WebSocket,
};

/// Source addresses the clients spread their connections over: 127.0.0.1..=127.0.0.10.
const SOURCE_ADDRESSES: u8 = 10;
/// Capacity of each subscriber's outbound queue in the fan-out test.
const SUBSCRIBER_QUEUE: usize = 64;
/// Most queued messages a subscriber's writer sends before one flush.
const WRITE_BATCH: usize = 32;
/// Compression threshold of the tuned yawc variant, in bytes.
const TUNED_COMPRESSION_THRESHOLD: usize = 256;
/// Read and write buffer capacity of the tuned yawc variant, in bytes.
const TUNED_BUFFER: usize = 1024;
/// Read and write buffer size of the `axum-small` variant, in bytes.
const AXUM_SMALL_BUFFER: usize = 4096;
/// Idle deflate states kept by the tuned variant's shared pool (per direction).
const TUNED_POOL_CAPACITY: usize = 16;

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

// ---------------------------------------------------------------------------
// Server variants
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Impl {
    AxumDefault,
    AxumSmall,
    YawcDefault,
    YawcTuned,
    YawcPlain,
}

impl Impl {
    const ALL: [Impl; 4] = [
        Impl::AxumDefault,
        Impl::AxumSmall,
        Impl::YawcDefault,
        Impl::YawcTuned,
    ];

    fn parse(name: &str) -> Result<Self> {
        [Impl::YawcPlain]
            .into_iter()
            .chain(Self::ALL)
            .find(|imp| imp.name() == name)
            .ok_or_else(|| anyhow!("unknown --impl {name:?}"))
    }

    /// The variant `--impl` names.
    fn from_args(args: &Args) -> Result<Self> {
        let name = args.get("impl", NO_ENV).context("--impl is required")?;
        Impl::parse(&name)
    }

    fn name(self) -> &'static str {
        match self {
            Impl::AxumDefault => "axum-default",
            Impl::AxumSmall => "axum-small",
            Impl::YawcDefault => "yawc-default",
            Impl::YawcTuned => "yawc-tuned",
            Impl::YawcPlain => "yawc-plain",
        }
    }
}

/// The yawc options of the two yawc variants. `pool` is shared by every connection.
fn yawc_server_options(imp: Impl, pool: DeflatePool) -> Options {
    match imp {
        // permessage-deflate with yawc's defaults: level 6, context takeover both
        // ways, every message compressed, 8 KiB socket buffers.
        Impl::YawcDefault => Options::default().with_compression_level(CompressionLevel::default()),
        // What the gateway should use: state lives in the pool between messages.
        Impl::YawcTuned => Options::default()
            .with_low_latency_compression()
            .server_no_context_takeover()
            .client_no_context_takeover()
            .with_deflate_pool(pool)
            .with_compression_threshold(TUNED_COMPRESSION_THRESHOLD)
            .with_read_buffer_capacity(TUNED_BUFFER)
            .with_write_buffer_capacity(TUNED_BUFFER),
        // Diagnostic: yawc's framing alone.
        Impl::YawcPlain => Options::default()
            .without_compression()
            .with_read_buffer_capacity(TUNED_BUFFER)
            .with_write_buffer_capacity(TUNED_BUFFER),
        Impl::AxumDefault | Impl::AxumSmall => unreachable!("not a yawc variant"),
    }
}

/// One subscriber of the fan-out test: its id and its bounded outbound queue.
type Member<M> = (u64, mpsc::Sender<M>);

/// The subscribers of the fan-out test: copy-on-write, so a publish takes one
/// `Arc` clone and no lock while it delivers.
struct Hub<M> {
    members: RwLock<Arc<Vec<Member<M>>>>,
    next_id: AtomicU64,
}

impl<M: Clone> Hub<M> {
    fn new() -> Self {
        Self {
            members: RwLock::new(Arc::new(Vec::new())),
            next_id: AtomicU64::new(0),
        }
    }

    fn join(&self, sender: mpsc::Sender<M>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut members = self.members.write().expect("hub lock");
        let mut next = Vec::with_capacity(members.len() + 1);
        next.extend(members.iter().cloned());
        next.push((id, sender));
        *members = Arc::new(next);
        id
    }

    fn leave(&self, id: u64) {
        let mut members = self.members.write().expect("hub lock");
        let next: Vec<_> = members.iter().filter(|(m, _)| *m != id).cloned().collect();
        *members = Arc::new(next);
    }

    /// Queues `message` for every member, waiting while a member's queue is full.
    async fn publish(&self, message: M) {
        let members = self.members.read().expect("hub lock").clone();
        for (_, sender) in members.iter() {
            // A member that left is skipped.
            let _ = sender.send(message.clone()).await;
        }
    }
}

struct YawcState {
    options: Options,
    hub: Hub<Bytes>,
}

struct AxumState {
    small: bool,
    hub: Hub<Message>,
}

fn router(imp: Impl) -> Router {
    match imp {
        Impl::YawcDefault | Impl::YawcTuned | Impl::YawcPlain => {
            let state = Arc::new(YawcState {
                options: yawc_server_options(imp, DeflatePool::new(TUNED_POOL_CAPACITY)),
                hub: Hub::new(),
            });
            Router::new()
                .route("/echo", get(yawc_echo))
                .route("/sub", get(yawc_subscribe))
                .route("/pub", get(yawc_publish))
                .with_state(state)
        }
        Impl::AxumDefault | Impl::AxumSmall => {
            let state = Arc::new(AxumState {
                small: imp == Impl::AxumSmall,
                hub: Hub::new(),
            });
            Router::new()
                .route("/echo", get(axum_echo))
                .route("/sub", get(axum_subscribe))
                .route("/pub", get(axum_publish))
                .with_state(state)
        }
    }
}

fn yawc_upgrade<F, Fut>(upgrade: IncomingUpgrade, state: &YawcState, handler: F) -> Response
where
    F: FnOnce(HttpWebSocket) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    match upgrade.upgrade(state.options.clone()) {
        Ok((response, upgraded)) => {
            tokio::spawn(async move {
                if let Ok(ws) = upgraded.await {
                    handler(ws).await;
                }
            });
            response.into_response()
        }
        Err(_) => StatusCode::BAD_REQUEST.into_response(),
    }
}

/// A data frame's payload as a new frame of the same kind; `None` for control frames.
fn yawc_data(frame: Frame) -> Option<Frame> {
    let (opcode, _, payload) = frame.into_parts();
    match opcode {
        OpCode::Text => Some(Frame::text(payload)),
        OpCode::Binary => Some(Frame::binary(payload)),
        _ => None,
    }
}

async fn yawc_echo(State(state): State<Arc<YawcState>>, upgrade: IncomingUpgrade) -> Response {
    yawc_upgrade(upgrade, &state, |mut ws| async move {
        while let Some(frame) = ws.next().await {
            if let Some(reply) = yawc_data(frame) {
                if ws.send(reply).await.is_err() {
                    break;
                }
            }
        }
    })
}

async fn yawc_subscribe(State(state): State<Arc<YawcState>>, upgrade: IncomingUpgrade) -> Response {
    let hub_state = state.clone();
    yawc_upgrade(upgrade, &state, move |mut ws| async move {
        let hub = &hub_state.hub;
        let (sender, mut queue) = mpsc::channel::<Bytes>(SUBSCRIBER_QUEUE);
        let id = hub.join(sender);
        // Tells the client it is registered: deliveries can start.
        if ws
            .send(Frame::text(Bytes::from_static(b"joined")))
            .await
            .is_ok()
        {
            loop {
                tokio::select! {
                    message = queue.recv() => {
                        let Some(message) = message else { break };
                        if ws.feed(Frame::text(message)).await.is_err() {
                            break;
                        }
                        let mut batch = 1;
                        while batch < WRITE_BATCH {
                            let Ok(message) = queue.try_recv() else { break };
                            if ws.feed(Frame::text(message)).await.is_err() {
                                break;
                            }
                            batch += 1;
                        }
                        if ws.flush().await.is_err() {
                            break;
                        }
                    }
                    frame = ws.next() => {
                        if frame.is_none() {
                            break;
                        }
                    }
                }
            }
        }
        hub.leave(id);
    })
}

async fn yawc_publish(State(state): State<Arc<YawcState>>, upgrade: IncomingUpgrade) -> Response {
    let hub_state = state.clone();
    yawc_upgrade(upgrade, &state, move |mut ws| async move {
        while let Some(frame) = ws.next().await {
            if let Some(frame) = yawc_data(frame) {
                hub_state.hub.publish(frame.into_payload()).await;
            }
        }
    })
}

fn axum_configure(upgrade: WebSocketUpgrade, state: &AxumState) -> WebSocketUpgrade {
    if state.small {
        upgrade
            .read_buffer_size(AXUM_SMALL_BUFFER)
            .write_buffer_size(AXUM_SMALL_BUFFER)
    } else {
        upgrade
    }
}

async fn axum_echo(State(state): State<Arc<AxumState>>, upgrade: WebSocketUpgrade) -> Response {
    axum_configure(upgrade, &state).on_upgrade(|mut ws: AxumWebSocket| async move {
        while let Some(Ok(message)) = ws.next().await {
            if matches!(message, Message::Text(_) | Message::Binary(_))
                && ws.send(message).await.is_err()
            {
                break;
            }
        }
    })
}

async fn axum_subscribe(
    State(state): State<Arc<AxumState>>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let hub_state = state.clone();
    axum_configure(upgrade, &state).on_upgrade(move |mut ws: AxumWebSocket| async move {
        let hub = &hub_state.hub;
        let (sender, mut queue) = mpsc::channel::<Message>(SUBSCRIBER_QUEUE);
        let id = hub.join(sender);
        if ws.send(Message::text("joined")).await.is_ok() {
            loop {
                tokio::select! {
                    message = queue.recv() => {
                        let Some(message) = message else { break };
                        if ws.feed(message).await.is_err() {
                            break;
                        }
                        let mut batch = 1;
                        while batch < WRITE_BATCH {
                            let Ok(message) = queue.try_recv() else { break };
                            if ws.feed(message).await.is_err() {
                                break;
                            }
                            batch += 1;
                        }
                        if ws.flush().await.is_err() {
                            break;
                        }
                    }
                    message = ws.next() => {
                        if !matches!(message, Some(Ok(_))) {
                            break;
                        }
                    }
                }
            }
        }
        hub.leave(id);
    })
}

async fn axum_publish(State(state): State<Arc<AxumState>>, upgrade: WebSocketUpgrade) -> Response {
    let hub_state = state.clone();
    axum_configure(upgrade, &state).on_upgrade(move |mut ws: AxumWebSocket| async move {
        while let Some(Ok(message)) = ws.next().await {
            if matches!(message, Message::Text(_) | Message::Binary(_)) {
                hub_state.hub.publish(message).await;
            }
        }
    })
}

/// `server`: serves one variant, printing `LISTENING <addr>` on stdout.
async fn server_command(args: &Args) -> Result<()> {
    let imp = Impl::from_args(args)?;
    let addr: SocketAddr = args.string("addr", NO_ENV, "127.0.0.1:0").parse()?;
    if !addr.ip().is_loopback() {
        bail!("--addr must be a loopback address");
    }
    let max_secs: u64 = args.num("max-secs", NO_ENV, 900)?;
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    println!("LISTENING {local}");
    eprintln!(
        "ws-compare server: {} on {local}, pid {}, stops after {max_secs} s",
        imp.name(),
        std::process::id()
    );
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let serve = axum::serve(listener, router(imp));
    let exit_on_eof = args.flag("exit-on-eof", NO_ENV);
    tokio::select! {
        result = std::future::IntoFuture::into_future(serve) => result?,
        _ = sleep(Duration::from_secs(max_secs)) => {
            eprintln!("ws-compare server: --max-secs reached, stopping");
        }
        _ = stdin_closed(), if exit_on_eof => {}
    }
    Ok(())
}

/// Resolves once stdin reaches end of file (the parent closed it or died).
async fn stdin_closed() {
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    while let Ok(n) = stdin.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

// ---------------------------------------------------------------------------
// Process helpers
// ---------------------------------------------------------------------------

/// A server to measure: spawned by this process, or an existing one given by
/// `--addr` and `--server-pid`.
struct Target {
    addr: SocketAddr,
    pid: u32,
    child: Option<(Child, ChildStdin)>,
    label: String,
}

impl Target {
    async fn from_args(args: &Args) -> Result<Self> {
        match args.get("addr", NO_ENV) {
            Some(addr) => {
                let addr: SocketAddr = addr.parse()?;
                if !addr.ip().is_loopback() {
                    bail!("--addr must be a loopback address");
                }
                let pid = args.num("server-pid", NO_ENV, 0u32)?;
                if pid == 0 {
                    bail!("--server-pid is required with --addr");
                }
                Ok(Self {
                    addr,
                    pid,
                    child: None,
                    label: args.string("impl", NO_ENV, "external"),
                })
            }
            None => Self::spawn(Impl::from_args(args)?).await,
        }
    }

    async fn spawn(imp: Impl) -> Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["server", "--impl", imp.name(), "--addr", "127.0.0.1:0"])
            .args(["--max-secs", "900", "--exit-on-eof"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child.stdin.take().context("server stdin")?;
        let stdout = child.stdout.take().context("server stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = timeout(Duration::from_secs(10), lines.next_line())
            .await
            .map_err(|_| anyhow!("server did not start within 10 s"))??
            .context("server exited before listening")?;
        let addr = line
            .strip_prefix("LISTENING ")
            .with_context(|| format!("unexpected server output {line:?}"))?
            .parse()?;
        let pid = child.id().context("server pid")?;
        Ok(Self {
            addr,
            pid,
            child: Some((child, stdin)),
            label: imp.name().to_owned(),
        })
    }

    /// Stops a server this process spawned: closes its stdin, then kills it if it
    /// has not left within 5 s.
    async fn stop(mut self) {
        if let Some((mut child, stdin)) = self.child.take() {
            drop(stdin);
            if timeout(Duration::from_secs(5), child.wait()).await.is_err() {
                let _ = child.kill().await;
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Client side
// ---------------------------------------------------------------------------

/// The `index`-th connection's source address: 127.0.0.1..=127.0.0.10 in turn.
fn source_address(index: u64) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 1 + (index % u64::from(SOURCE_ADDRESSES)) as u8)
}

/// Client options, the same against every server: permessage-deflate offered
/// (plain `permessage-deflate`, context takeover allowed both ways, as a browser
/// offers it), level 1 to keep the client's CPU share low, and a pool so that a
/// server imposing no context takeover also spares the client's memory.
fn client_options(pool: &DeflatePool) -> Options {
    Options::default()
        .with_compression_level(CompressionLevel::fast())
        .with_deflate_pool(pool.clone())
        .with_read_buffer_capacity(4096)
        .with_write_buffer_capacity(4096)
}

type ClientSocket = WebSocket<TcpStream>;

/// The `index`-th connection to `path` on `server`.
async fn connect(
    server: SocketAddr,
    index: u64,
    path: &str,
    options: Options,
) -> Result<ClientSocket> {
    let stream = connect_from(source_address(index), server).await?;
    let url = format!("ws://{server}{path}").parse()?;
    Ok(WebSocket::handshake(url, stream, options).await?)
}

/// Next data frame, skipping control frames; an error once the connection ends.
async fn next_data(ws: &mut ClientSocket) -> Result<Bytes> {
    loop {
        let frame = ws.next().await.context("connection closed")?;
        match frame.opcode() {
            OpCode::Text | OpCode::Binary => return Ok(frame.into_payload()),
            OpCode::Close => bail!("connection closed"),
            _ => {}
        }
    }
}

/// The words of the messages' text.
const WORDS: [&str; 8] = [
    "hello ",
    "roomcast ",
    "gateway ",
    "the ",
    "quick ",
    "brown ",
    "fox ",
    "jumps ",
];

/// A JSON message of exactly `len` bytes (at least its fixed part), compressible
/// the way chat-like JSON is.
fn json_message(len: usize, seq: u64) -> Bytes {
    let mut text = format!(
        "{{\"type\":\"message\",\"room\":\"lobby\",\"offset\":{seq},\"from\":\"user-{}\",\"data\":{{\"text\":\"",
        seq % 997
    );
    let fixed = text.len();
    let body = len.saturating_sub(3).max(fixed);
    text.push_str(&filler(body - fixed, &WORDS, seq as usize));
    text.push_str("\"}}");
    Bytes::from(text)
}

/// What a probe of the server's permessage-deflate answer found, for a report.
fn describe_deflate(answer: &Option<String>) -> String {
    match answer {
        Some(value) if value.contains("permessage-deflate") => format!("yes ({value})"),
        Some(value) => format!("no ({value})"),
        None => "no".to_owned(),
    }
}

// ---------------------------------------------------------------------------
// idle
// ---------------------------------------------------------------------------

struct IdleResult {
    label: String,
    conns: u64,
    failed: u64,
    base_kib: u64,
    loaded_kib: u64,
    client_kib: u64,
    deflate: Option<String>,
    load: String,
}

impl IdleResult {
    fn per_conn_kib(&self) -> f64 {
        if self.conns == 0 {
            return f64::NAN;
        }
        (self.loaded_kib as f64 - self.base_kib as f64) / self.conns as f64
    }

    fn print(&self) {
        println!(
            "idle {}: {} connections ({} failed), server RSS {} -> {} KiB, {:.1} KiB per connection; \
             client workers RSS {} KiB; deflate {}; load {}",
            self.label,
            self.conns,
            self.failed,
            self.base_kib,
            self.loaded_kib,
            self.per_conn_kib(),
            self.client_kib,
            describe_deflate(&self.deflate),
            self.load,
        );
    }
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

/// Opens `conns` connections from `procs` worker processes, each exchanging
/// one `msg_bytes` message each way (none with 0), holds them `settle`, and
/// measures.
async fn run_idle(
    target: &Target,
    conns: u64,
    procs: u64,
    msg_bytes: usize,
    settle: Duration,
) -> Result<IdleResult> {
    let deflate = probe_deflate(target.addr, "/echo", None).await?;
    sleep(Duration::from_secs(1)).await;
    let server_rss =
        || rss_kib(target.pid).with_context(|| format!("no VmRSS for pid {}", target.pid));
    let base_kib = server_rss()?;
    let procs = procs.clamp(1, conns.max(1));
    let exe = std::env::current_exe()?;
    let mut workers = Vec::new();
    let mut first = 0;
    for p in 0..procs {
        let n = conns / procs + u64::from(p < conns % procs);
        if n >= 19_000 {
            bail!("more than 19,000 connections per worker: raise --procs");
        }
        let mut child = Command::new(&exe)
            .arg("idle-client")
            .args(["--addr", &target.addr.to_string()])
            .args([
                "--conns",
                &n.to_string(),
                "--first-index",
                &first.to_string(),
            ])
            .args(["--msg-bytes", &msg_bytes.to_string(), "--max-secs", "600"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        first += n;
        let stdin = child.stdin.take().context("worker stdin")?;
        let stdout = child.stdout.take().context("worker stdout")?;
        workers.push(Worker {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
        });
    }
    let (mut ok, mut failed) = (0u64, 0u64);
    for worker in &mut workers {
        let line = timeout(Duration::from_secs(300), worker.lines.next_line())
            .await
            .map_err(|_| anyhow!("a worker did not finish connecting within 300 s"))??
            .context("a worker exited early")?;
        let mut fields = line.split_whitespace();
        if fields.next() != Some("READY") {
            bail!("unexpected worker output {line:?}");
        }
        ok += fields
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        failed += fields
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    sleep(settle).await;
    let loaded_kib = server_rss()?;
    let worker_pids: Vec<u32> = workers.iter().filter_map(|w| w.child.id()).collect();
    let client_kib = rss_sum_kib(&worker_pids);
    let load = load_average();
    for worker in workers {
        let Worker {
            mut child, stdin, ..
        } = worker;
        drop(stdin);
        if timeout(Duration::from_secs(10), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    }
    Ok(IdleResult {
        label: target.label.clone(),
        conns: ok,
        failed,
        base_kib,
        loaded_kib,
        client_kib,
        deflate,
        load,
    })
}

/// `idle`: [`run_idle`] against the server `--impl` or `--addr` names.
async fn idle_command(args: &Args) -> Result<()> {
    let target = Target::from_args(args).await?;
    let result = run_idle(
        &target,
        args.num("conns", NO_ENV, 10_000)?,
        args.num("procs", NO_ENV, 2)?,
        args.num("msg-bytes", NO_ENV, 512)?,
        Duration::from_secs(args.num("settle-secs", NO_ENV, 3)?),
    )
    .await;
    target.stop().await;
    result?.print();
    Ok(())
}

/// Worker process of `idle`: opens its connections, exchanges one message on
/// each, prints `READY <ok> <failed>`, and holds them until stdin closes.
async fn idle_client_command(args: &Args) -> Result<()> {
    let addr: SocketAddr = args
        .get("addr", NO_ENV)
        .context("--addr is required")?
        .parse()?;
    if !addr.ip().is_loopback() {
        bail!("--addr must be a loopback address");
    }
    let conns: u64 = args.num("conns", NO_ENV, 1000)?;
    let first: u64 = args.num("first-index", NO_ENV, 0)?;
    let msg_bytes: usize = args.num("msg-bytes", NO_ENV, 512)?;
    let max_secs: u64 = args.num("max-secs", NO_ENV, 600)?;
    let concurrency: usize = args.num("concurrency", NO_ENV, 256)?;
    let pool = DeflatePool::new(TUNED_POOL_CAPACITY);
    let permits = Arc::new(Semaphore::new(concurrency));
    let (done, mut results) = mpsc::unbounded_channel::<bool>();
    for i in 0..conns {
        let permits = permits.clone();
        let done = done.clone();
        let options = client_options(&pool);
        tokio::spawn(async move {
            let permit = permits.acquire_owned().await;
            let opened = timeout(Duration::from_secs(60), async {
                let mut ws = connect(addr, first + i, "/echo", options).await?;
                if msg_bytes > 0 {
                    ws.send(Frame::text(json_message(msg_bytes, first + i)))
                        .await?;
                    next_data(&mut ws).await?;
                }
                anyhow::Ok(ws)
            })
            .await;
            drop(permit);
            match opened {
                Ok(Ok(mut ws)) => {
                    let _ = done.send(true);
                    // Hold the connection until the server closes it or the process ends.
                    while ws.next().await.is_some() {}
                }
                _ => {
                    let _ = done.send(false);
                }
            }
        });
    }
    drop(done);
    let (mut ok, mut failed) = (0u64, 0u64);
    while ok + failed < conns {
        match results.recv().await {
            Some(true) => ok += 1,
            Some(false) => failed += 1,
            None => break,
        }
    }
    println!("READY {ok} {failed}");
    tokio::select! {
        _ = stdin_closed() => {}
        _ = sleep(Duration::from_secs(max_secs)) => {
            eprintln!("ws-compare idle-client: --max-secs reached, leaving");
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// echo
// ---------------------------------------------------------------------------

struct ThroughputResult {
    label: String,
    per_sec: f64,
    server_cpu_us: f64,
    errors: u64,
    deflate: Option<String>,
    load: String,
}

/// Counts events while a measurement window is open.
#[derive(Default)]
struct Window {
    open: AtomicBool,
    stop: AtomicBool,
    count: AtomicU64,
    errors: AtomicU64,
}

impl Window {
    fn record(&self, n: u64) {
        if self.open.load(Ordering::Relaxed) {
            self.count.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Opens the window after `warmup`, closes it `secs` later; returns the
    /// count per second and the server's CPU microseconds per counted event.
    async fn measure(&self, pid: u32, warmup: Duration, secs: Duration) -> Result<(f64, f64)> {
        sleep(warmup).await;
        let server_cpu = || cpu_secs(pid).with_context(|| format!("no CPU time for pid {pid}"));
        let cpu_before = server_cpu()?;
        self.open.store(true, Ordering::Relaxed);
        let started = Instant::now();
        sleep(secs).await;
        self.open.store(false, Ordering::Relaxed);
        let elapsed = started.elapsed().as_secs_f64();
        let cpu = server_cpu()? - cpu_before;
        self.stop.store(true, Ordering::Relaxed);
        let count = self.count.load(Ordering::Relaxed) as f64;
        Ok((count / elapsed, cpu * 1e6 / count.max(1.0)))
    }
}

/// `count` connections to `path`, at most 128 being set up at once.
async fn open_many(
    addr: SocketAddr,
    count: u64,
    path: &'static str,
    pool: &DeflatePool,
) -> Result<Vec<ClientSocket>> {
    let permits = Arc::new(Semaphore::new(128));
    let mut handles = Vec::new();
    for i in 0..count {
        let permits = permits.clone();
        let options = client_options(pool);
        handles.push(tokio::spawn(async move {
            let _permit = permits.acquire_owned().await?;
            timeout(Duration::from_secs(30), connect(addr, i, path, options))
                .await
                .map_err(|_| anyhow!("connect timed out"))?
        }));
    }
    let mut sockets = Vec::with_capacity(handles.len());
    for handle in handles {
        sockets.push(handle.await??);
    }
    Ok(sockets)
}

/// `conns` connections each sending a `payload_bytes` message and waiting for
/// its echo, again and again, for `secs`.
async fn run_echo(
    target: &Target,
    conns: u64,
    secs: u64,
    payload_bytes: usize,
) -> Result<ThroughputResult> {
    let deflate = probe_deflate(target.addr, "/echo", None).await?;
    let pool = DeflatePool::new(TUNED_POOL_CAPACITY);
    let sockets = open_many(target.addr, conns, "/echo", &pool).await?;
    let window = Arc::new(Window::default());
    let mut tasks: Vec<JoinHandle<()>> = Vec::new();
    for (i, mut ws) in sockets.into_iter().enumerate() {
        let window = window.clone();
        let message = json_message(payload_bytes, i as u64);
        tasks.push(tokio::spawn(async move {
            while !window.stop.load(Ordering::Relaxed) {
                let round_trip = async {
                    ws.send(Frame::text(message.clone())).await?;
                    next_data(&mut ws).await
                };
                match timeout(Duration::from_secs(10), round_trip).await {
                    Ok(Ok(_)) => window.record(1),
                    _ => {
                        window.errors.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
            }
        }));
    }
    let measured = window
        .measure(
            target.pid,
            Duration::from_secs(1),
            Duration::from_secs(secs),
        )
        .await;
    let load = load_average();
    for task in &tasks {
        task.abort();
    }
    for task in tasks {
        let _ = task.await;
    }
    let (per_sec, server_cpu_us) = measured?;
    Ok(ThroughputResult {
        label: target.label.clone(),
        per_sec,
        server_cpu_us,
        errors: window.errors.load(Ordering::Relaxed),
        deflate,
        load,
    })
}

/// `echo`: [`run_echo`] against the server `--impl` or `--addr` names.
async fn echo_command(args: &Args) -> Result<()> {
    let target = Target::from_args(args).await?;
    let result = run_echo(
        &target,
        args.num("conns", NO_ENV, 100)?,
        args.num("secs", NO_ENV, 10)?,
        args.num("payload-bytes", NO_ENV, 100)?,
    )
    .await;
    target.stop().await;
    let r = result?;
    println!(
        "echo {}: {:.0} msg/s, server CPU {:.1} us/msg, {} errors, deflate {}, load {}",
        r.label,
        r.per_sec,
        r.server_cpu_us,
        r.errors,
        describe_deflate(&r.deflate),
        r.load
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// fanout
// ---------------------------------------------------------------------------

/// `subs` subscribers and one publisher sending `payload_bytes` messages as
/// fast as the server takes them, for `secs`.
async fn run_fanout(
    target: &Target,
    subs: u64,
    secs: u64,
    payload_bytes: usize,
) -> Result<ThroughputResult> {
    let deflate = probe_deflate(target.addr, "/echo", None).await?;
    let pool = DeflatePool::new(TUNED_POOL_CAPACITY);
    let mut subscribers = open_many(target.addr, subs, "/sub", &pool).await?;
    // Each subscriber is registered once its "joined" message arrives.
    for ws in &mut subscribers {
        timeout(Duration::from_secs(30), next_data(ws))
            .await
            .map_err(|_| anyhow!("a subscriber was not registered within 30 s"))??;
    }
    let window = Arc::new(Window::default());
    let mut tasks: Vec<JoinHandle<()>> = Vec::new();
    for mut ws in subscribers {
        let window = window.clone();
        tasks.push(tokio::spawn(async move {
            while let Ok(_message) = next_data(&mut ws).await {
                window.record(1);
            }
        }));
    }
    let mut publisher = connect(target.addr, subs, "/pub", client_options(&pool)).await?;
    let publisher_window = window.clone();
    tasks.push(tokio::spawn(async move {
        let mut seq = 0;
        while !publisher_window.stop.load(Ordering::Relaxed) {
            let message = Frame::text(json_message(payload_bytes, seq));
            if publisher.send(message).await.is_err() {
                publisher_window.errors.fetch_add(1, Ordering::Relaxed);
                break;
            }
            seq += 1;
        }
    }));
    let measured = window
        .measure(
            target.pid,
            Duration::from_secs(1),
            Duration::from_secs(secs),
        )
        .await;
    let load = load_average();
    for task in &tasks {
        task.abort();
    }
    for task in tasks {
        let _ = task.await;
    }
    let (per_sec, server_cpu_us) = measured?;
    Ok(ThroughputResult {
        label: target.label.clone(),
        per_sec,
        server_cpu_us,
        errors: window.errors.load(Ordering::Relaxed),
        deflate,
        load,
    })
}

/// `fanout`: [`run_fanout`] against the server `--impl` or `--addr` names.
async fn fanout_command(args: &Args) -> Result<()> {
    let target = Target::from_args(args).await?;
    let result = run_fanout(
        &target,
        args.num("subs", NO_ENV, 1000)?,
        args.num("secs", NO_ENV, 10)?,
        args.num("payload-bytes", NO_ENV, 100)?,
    )
    .await;
    target.stop().await;
    let r = result?;
    println!(
        "fanout {}: {:.0} deliveries/s, server CPU {:.2} us/delivery, {} errors, deflate {}, load {}",
        r.label,
        r.per_sec,
        r.server_cpu_us,
        r.errors,
        describe_deflate(&r.deflate),
        r.load
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// all
// ---------------------------------------------------------------------------

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_json_of_exactly_the_length_asked_for() {
        for (len, seq) in [
            (100, 0),
            (512, 7),
            (1024, 123_456),
            (4096, u64::from(u32::MAX)),
        ] {
            let message = json_message(len, seq);
            assert_eq!(message.len(), len, "{len} bytes, seq {seq}");
            let value: serde_json::Value = serde_json::from_slice(&message).unwrap();
            assert_eq!(value["offset"], seq);
        }
        // Shorter than its fixed part: the fixed part, with an empty text.
        let short = json_message(10, 3);
        assert_eq!(
            &short[..],
            br#"{"type":"message","room":"lobby","offset":3,"from":"user-3","data":{"text":""}}"#
        );
    }

    #[test]
    fn a_message_is_the_same_bytes_it_always_was() {
        // As the message builder wrote it before it used the library's filler.
        assert_eq!(
            &json_message(120, 5)[..],
            br#"{"type":"message","room":"lobby","offset":5,"from":"user-5","data":{"text":"brown hello the fox roomcast quick jumps "}}"#
        );
    }

    #[test]
    fn connections_take_ten_loopback_source_addresses_in_turn() {
        assert_eq!(source_address(0), Ipv4Addr::new(127, 0, 0, 1));
        assert_eq!(source_address(9), Ipv4Addr::new(127, 0, 0, 10));
        assert_eq!(source_address(10), Ipv4Addr::new(127, 0, 0, 1));
    }
}

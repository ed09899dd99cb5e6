//! The node's HTTP front: the accept loop, and everything a socket may do
//! before it is a WebSocket (or between API requests).
//!
//! - **At `accept`**, a socket is refused (closed at once, nothing
//!   allocated for it) when its address already holds
//!   `limits.max_connections_per_ip` sockets, or when
//!   `limits.max_pending_handshakes` sockets are waiting for their request
//!   head. An admitted socket takes its address's slot and keeps it until
//!   the socket closes, through the WebSocket upgrade: the slot lives in
//!   [`NodeStream`], which hyper hands to the WebSocket.
//! - **Each connection** runs hyper's HTTP/1 server (with upgrades), with
//!   `http.max_header_bytes` as hyper's head limit (431), under one
//!   deadline that follows the connection's [`Phase`]: the request head
//!   (`http.header_read_timeout_ms`, from accept or from the first byte of a
//!   later request), the request body (`http.body_timeout_ms`, from the end
//!   of the head to the end of the body) and the keep-alive wait
//!   (`http.idle_timeout_ms`, from the response to the next request's first
//!   byte). A connection past its deadline is closed and counted in
//!   `roomcast_http_timeouts_total`. Why this is hand-written rather than
//!   hyper's `header_read_timeout`: docs/decisions.md.
//! - **Shutdown** is axum's: once the drain has run, no more accepts, every
//!   HTTP connection is shut down gracefully (one with no request under way
//!   is closed at once), and the server returns when they are gone
//!   (WebSockets left hyper at their upgrade; the drain closed them).

use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tower_service::Service as _;

use crate::config::HttpConfig;
use crate::limits::IpSlot;
use crate::metrics::{AcceptRefusal, HttpTimeout, Metrics, Rejection};
use crate::node::Node;

/// Who is at the other end of an accepted connection: the address, and the
/// socket's descriptor, which the heartbeat uses for direct pings
/// (`direct_write.rs`).
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub addr: SocketAddr,
    pub fd: Option<crate::direct_write::Fd>,
}

/// Where a connection is in its current request; it decides the deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Waiting for (the rest of) a request head.
    Head = 0,
    /// The head is in; its body is still arriving.
    Body,
    /// The request is in; the node is answering it.
    Busy,
    /// The response is out; waiting for the next request's first byte.
    Idle,
    /// Switched to WebSocket: no HTTP deadline any more.
    Upgraded,
}

impl Phase {
    fn from_u8(v: u8) -> Phase {
        match v {
            0 => Phase::Head,
            1 => Phase::Body,
            2 => Phase::Busy,
            3 => Phase::Idle,
            _ => Phase::Upgraded,
        }
    }
}

/// A connection's phase and when it began, shared by its socket (which
/// sees the first byte of a request), the service (which sees heads,
/// bodies and responses) and the task that enforces the deadline. All
/// three are polled by the connection's one task until the upgrade; the
/// atomics only make the type shareable.
pub struct Clock {
    phase: AtomicU8,
    /// Milliseconds from `born` to the start of the phase.
    since_ms: AtomicU64,
    born: Instant,
    metrics: Arc<Metrics>,
}

impl Clock {
    /// A clock in [`Phase::Head`], counted in `roomcast_pending_handshakes`.
    fn new(metrics: Arc<Metrics>) -> Clock {
        metrics.pending_handshakes.inc();
        Clock {
            phase: AtomicU8::new(Phase::Head as u8),
            since_ms: AtomicU64::new(0),
            born: Instant::now(),
            metrics,
        }
    }

    fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Relaxed))
    }

    /// Enters `to` now, keeping the pending-head gauge in step.
    fn enter(&self, to: Phase) {
        let since = self.born.elapsed().as_millis() as u64;
        self.since_ms.store(since, Ordering::Relaxed);
        let from = Phase::from_u8(self.phase.swap(to as u8, Ordering::Relaxed));
        match (from == Phase::Head, to == Phase::Head) {
            (true, false) => self.metrics.pending_handshakes.dec(),
            (false, true) => self.metrics.pending_handshakes.inc(),
            _ => {}
        }
    }

    /// Enters `to` if the connection is in `from`.
    fn advance(&self, from: Phase, to: Phase) {
        // Only ever called from the connection's task: no other thread
        // moves the phase between the load and the swap.
        if self.phase() == from {
            self.enter(to);
        }
    }

    /// The phase, and the instant its deadline counts from.
    fn state(&self) -> (Phase, Instant) {
        let phase = self.phase();
        let since = self.since_ms.load(Ordering::Relaxed);
        (phase, self.born + Duration::from_millis(since))
    }
}

impl Drop for Clock {
    fn drop(&mut self) {
        if self.phase() == Phase::Head {
            self.metrics.pending_handshakes.dec();
        }
    }
}

/// The deadlines of one connection, as configured when it was accepted.
#[derive(Clone, Copy)]
struct Timeouts {
    header: Duration,
    body: Duration,
    idle: Duration,
}

impl Timeouts {
    fn new(http: &HttpConfig) -> Timeouts {
        Timeouts {
            header: Duration::from_millis(http.header_read_timeout_ms),
            body: Duration::from_millis(http.body_timeout_ms),
            idle: Duration::from_millis(http.idle_timeout_ms),
        }
    }

    /// The deadline of a phase begun at `since`, and the timeout it is.
    fn deadline(&self, phase: Phase, since: Instant) -> Option<(Instant, HttpTimeout)> {
        match phase {
            Phase::Head => Some((since + self.header, HttpTimeout::Header)),
            Phase::Body => Some((since + self.body, HttpTimeout::Body)),
            Phase::Idle => Some((since + self.idle, HttpTimeout::Idle)),
            Phase::Busy | Phase::Upgraded => None,
        }
    }
}

/// An accepted socket: the TCP stream, its address's slot (released when
/// the socket closes, whether it was still HTTP or a WebSocket by then) and
/// its connection's clock. A byte read on a kept-alive connection starts the
/// next request's head; the first read after the upgrade lets the clock go
/// (a WebSocket keeps only the stream and the slot).
pub struct NodeStream {
    tcp: TcpStream,
    clock: Option<Arc<Clock>>,
    _slot: IpSlot,
}

impl AsyncRead for NodeStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.tcp).poll_read(cx, buf);
        if let Some(clock) = &self.clock {
            match clock.phase() {
                Phase::Idle if buf.filled().len() > before => clock.enter(Phase::Head),
                Phase::Upgraded => self.clock = None,
                _ => {}
            }
        }
        polled
    }
}

impl AsyncWrite for NodeStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// A request body that moves its connection from [`Phase::Body`] to
/// [`Phase::Busy`] once it has all arrived.
struct ClockedBody {
    inner: Incoming,
    clock: Arc<Clock>,
}

impl HttpBody for ClockedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.clock.advance(Phase::Body, Phase::Busy);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The service hyper calls for each request of one connection: the node's
/// router, with the peer's address as `ConnectInfo`, moving the clock.
#[derive(Clone)]
struct Front {
    router: Router,
    peer: Peer,
    clock: Arc<Clock>,
}

impl hyper::service::Service<Request<Incoming>> for Front {
    type Response = Response<axum::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let has_body = !request.body().is_end_stream();
        self.clock
            .enter(if has_body { Phase::Body } else { Phase::Busy });
        let clock = self.clock.clone();
        let mut request = request.map(|inner| ClockedBody {
            inner,
            clock: clock.clone(),
        });
        request.extensions_mut().insert(ConnectInfo(self.peer));
        let answer = self.router.clone().call(request);
        Box::pin(async move {
            let Ok(response) = answer.await;
            if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                clock.enter(Phase::Upgraded);
            } else {
                clock.enter(Phase::Idle);
            }
            Ok(response)
        })
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then stops
/// accepting and waits for the HTTP connections to end.
pub async fn serve(
    listener: TcpListener,
    node: Arc<Node>,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    // `true` once the shutdown has run; every connection task holds a
    // receiver, so the sender also knows when the last one has ended.
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    {
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            shutdown.await;
            stop_tx.send_replace(true);
        });
    }
    loop {
        let (tcp, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_error(e).await;
                    continue;
                }
            },
            _ = stop_rx.wait_for(|stop| *stop) => break,
        };
        let Some((slot, http)) = admit(&node, &addr) else {
            // Closed at once: the kernel sends the FIN, nothing else was made.
            drop(tcp);
            continue;
        };
        // No Nagle: a frame is written when it is ready. (yawc's
        // `no_delay` option only reaches the sockets it dials, not
        // accepted ones; with Nagle on, a member's second frame waited
        // for the first one's ACK.)
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        #[cfg(unix)]
        let fd = Some(std::os::fd::AsRawFd::as_raw_fd(&tcp));
        #[cfg(not(unix))]
        let fd = None;
        let peer = Peer { addr, fd };
        let clock = Arc::new(Clock::new(node.metrics.clone()));
        let stream = NodeStream {
            tcp,
            clock: Some(clock.clone()),
            _slot: slot,
        };
        let front = Front {
            router: app.clone(),
            peer,
            clock: clock.clone(),
        };
        let metrics = node.metrics.clone();
        let stop = stop_rx.clone();
        tokio::spawn(connection(stream, front, clock, http, metrics, stop));
    }
    drop(listener);
    drop(stop_rx);
    stop_tx.closed().await;
}

/// Decides whether an accepted socket may stay: its address's slot and the
/// HTTP settings to serve it with, or `None` (counted) to close it. Nothing
/// is allocated for a refused socket: the pending count is an atomic, and
/// an address at its limit already has its entry in the per-address map.
fn admit(node: &Node, addr: &std::net::SocketAddr) -> Option<(IpSlot, HttpConfig)> {
    let live = node.live.get();
    let limits = &live.config.limits;
    let pending = node.metrics.pending_handshakes.get();
    if pending >= limits.max_pending_handshakes as i64 {
        node.metrics.refuse_at_accept(AcceptRefusal::Pending);
        return None;
    }
    let Some(slot) = node
        .per_ip
        .acquire(addr.ip(), limits.max_connections_per_ip)
    else {
        node.metrics.refuse_at_accept(AcceptRefusal::PerIp);
        node.metrics.reject(Rejection::MaxConnectionsPerIp);
        return None;
    };
    Some((slot, live.config.http.clone()))
}

/// As axum's: a per-connection error (the peer gave up) is nothing; any
/// other (out of descriptors) is logged and accepting pauses for a second.
async fn accept_error(e: io::Error) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// One HTTP connection to its end (or to its upgrade), under its deadline.
async fn connection(
    stream: NodeStream,
    front: Front,
    clock: Arc<Clock>,
    http: HttpConfig,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
) {
    let timeouts = Timeouts::new(&http);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        // The deadlines are this module's (see the module's doc).
        .header_read_timeout(None)
        .max_header_size(http.max_header_bytes);
    let mut conn = pin!(builder
        .serve_connection(TokioIo::new(stream), front)
        .with_upgrades());
    // `stop` itself is held until the connection ends: the server waits
    // for every receiver to be gone.
    let mut watcher = stop.clone();
    let mut stopping = pin!(async move {
        let _ = watcher.wait_for(|stop| *stop).await;
    });
    let mut shutting_down = false;
    let (phase, since) = clock.state();
    let mut armed = (phase, since);
    let mut timer = pin!(tokio::time::sleep_until(
        timeouts
            .deadline(phase, since)
            .map_or(since, |(deadline, _)| deadline)
    ));
    let timed_out = poll_fn(|cx| {
        if !shutting_down && stopping.as_mut().poll(cx).is_ready() {
            shutting_down = true;
            // A connection with no request under way goes now (hyper would
            // wait for a head that has begun to arrive); one that is
            // answering finishes its response first.
            if matches!(clock.phase(), Phase::Head | Phase::Idle) {
                return Poll::Ready(None);
            }
            conn.as_mut().graceful_shutdown();
        }
        if let Poll::Ready(result) = conn.as_mut().poll(cx) {
            if let Err(e) = result {
                tracing::debug!(error = %e, "HTTP connection ended");
            }
            return Poll::Ready(None);
        }
        // Everything that moves the clock ran inside that poll.
        let (phase, since) = clock.state();
        let Some((deadline, kind)) = timeouts.deadline(phase, since) else {
            return Poll::Pending;
        };
        if armed != (phase, since) {
            armed = (phase, since);
            timer.as_mut().reset(deadline);
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(kind)),
            Poll::Pending => Poll::Pending,
        }
    })
    .await;
    if let Some(kind) = timed_out {
        metrics.http_timeout(kind);
        tracing::debug!(timeout = ?kind, "HTTP connection closed by its timeout");
    }
    drop(stop);
}

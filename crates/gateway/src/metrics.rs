//! Prometheus metrics of one node, rendered as text on `/metrics`.
//!
//! Plain atomics with fixed label sets: recording is one relaxed increment,
//! nothing allocates, and there is no registry lock on any hot path. The
//! fan-out path counts deliveries once per message (adding the member count),
//! not once per member.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use roomcast_protocol::{ClientFrame, ServerFrame};

#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

#[derive(Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn inc(&self) {
        self.0.fetch_add(1, Relaxed);
    }
    pub fn dec(&self) {
        self.0.fetch_sub(1, Relaxed);
    }
    pub fn set(&self, v: i64) {
        self.0.store(v, Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Relaxed)
    }
}

/// Upper bounds, in seconds, of the latency histograms' buckets.
const BUCKETS: [f64; 13] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
];

#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe_us(&self, us: u64) {
        let secs = us as f64 / 1e6;
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }
}

/// Why an upgrade or a new connection was turned away.
#[derive(Clone, Copy)]
pub enum Rejection {
    MaxConnections = 0,
    MaxConnectionsPerIp,
    Draining,
    Origin,
    BadRequest,
    Unauthorized,
}
const REJECTIONS: [&str; 6] = [
    "max_connections",
    "max_connections_per_ip",
    "draining",
    "origin",
    "bad_request",
    "unauthorized",
];

/// Why a socket was closed right after `accept`, before hyper saw it.
#[derive(Clone, Copy)]
pub enum AcceptRefusal {
    /// Its address already holds `limits.max_connections_per_ip` sockets.
    PerIp = 0,
    /// `limits.max_pending_handshakes` sockets are waiting for their head.
    Pending,
}
const ACCEPT_REFUSALS: [&str; 2] = ["per_ip", "pending"];

/// Which HTTP timeout closed a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpTimeout {
    Header = 0,
    Body,
    Idle,
}
const HTTP_TIMEOUTS: [&str; 3] = ["header", "body", "idle"];

/// Client frame types counted by `roomcast_frames_in_total`, then `invalid`.
const CLIENT_TYPES: usize = ClientFrame::KINDS.len() + 1;
const SERVER_TYPES: [&str; 13] = ServerFrame::KINDS;
/// Close codes counted by `roomcast_disconnects_total`, then `none` (the
/// socket ended without a close frame) and `other`.
const CLOSE_CODES: [u16; 16] = [
    1000, 1001, 1002, 1005, 1007, 1009, 1011, 1012, 1013, 4400, 4401, 4403, 4408, 4429, 4508, 0,
];
const CLOSE_LABELS: usize = CLOSE_CODES.len() + 1;

#[derive(Default)]
pub struct Metrics {
    pub connections: Gauge,
    pub connections_accepted: Counter,
    rejected: [Counter; REJECTIONS.len()],
    accept_refused: [Counter; ACCEPT_REFUSALS.len()],
    http_timeouts: [Counter; HTTP_TIMEOUTS.len()],
    /// Sockets waiting for (the rest of) a request head.
    pub pending_handshakes: Gauge,
    frames_in: [Counter; CLIENT_TYPES],
    frames_out: [Counter; SERVER_TYPES.len()],
    disconnects: [Counter; CLOSE_LABELS],
    pub rooms: Gauge,
    pub subscriptions: Gauge,
    pub published: Counter,
    pub deliveries: Counter,
    /// Deliveries written straight to the member's socket by the fan-out.
    pub deliveries_direct: Counter,
    pub publish_to_deliver: Histogram,
    pub broker_publish: Histogram,
    pub broker_errors: Counter,
    pub history_reads: Counter,
    pub recovered: Counter,
    pub not_recovered: Counter,
    pub rate_limited: Counter,
    pub outbound_overflows: Counter,
    pub direct_sent: Counter,
    pub resumes_ok: Counter,
    pub resumes_failed: Counter,
    pub api_requests: Counter,
    pub api_unauthorized: Counter,
    pub draining: Gauge,
    pub routed_to_node: Counter,
    pub routed_to_all: Counter,
    pub control_received: Counter,
    /// Proxy calls by call and result (`allow`, `deny`, `failure`).
    proxy_calls: [[Counter; 3]; 4],
    proxy_duration: [Histogram; 4],
    /// Configuration reloads: applied, refused.
    pub reloads_applied: Counter,
    pub reloads_refused: Counter,
}

const PROXY_RESULTS: [&str; 3] = ["allow", "deny", "failure"];

impl Metrics {
    pub fn reject(&self, why: Rejection) {
        self.rejected[why as usize].inc();
    }

    pub fn refuse_at_accept(&self, why: AcceptRefusal) {
        self.accept_refused[why as usize].inc();
    }

    pub fn http_timeout(&self, kind: HttpTimeout) {
        self.http_timeouts[kind as usize].inc();
    }

    pub fn frame_in(&self, frame: Option<&ClientFrame>) {
        let i = match frame {
            Some(f) => ClientFrame::KINDS
                .iter()
                .position(|t| *t == f.kind())
                .unwrap_or(CLIENT_TYPES - 1),
            None => CLIENT_TYPES - 1,
        };
        self.frames_in[i].inc();
    }

    pub fn frame_out(&self, frame: &ServerFrame) {
        self.frames_out_by_kind(frame.kind(), 1);
    }

    pub fn frames_out_by_kind(&self, kind: &str, n: u64) {
        if let Some(i) = SERVER_TYPES.iter().position(|t| *t == kind) {
            self.frames_out[i].add(n);
        }
    }

    pub fn proxy_call(
        &self,
        call: crate::proxy::Call,
        verdict: &crate::proxy::Verdict,
        took: std::time::Duration,
    ) {
        let result = match verdict {
            crate::proxy::Verdict::Allow(_) => 0,
            crate::proxy::Verdict::Deny { .. } => 1,
            crate::proxy::Verdict::Failed { .. } => 2,
        };
        self.proxy_calls[call as usize][result].inc();
        self.proxy_duration[call as usize].observe_us(took.as_micros() as u64);
    }

    pub fn disconnect(&self, code: u16) {
        let i = CLOSE_CODES
            .iter()
            .position(|c| *c == code)
            .unwrap_or(CLOSE_LABELS - 1);
        self.disconnects[i].inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        gauge(
            &mut out,
            "roomcast_connections",
            "Open WebSocket connections.",
            self.connections.get(),
        );
        counter(
            &mut out,
            "roomcast_connections_accepted_total",
            "Connections accepted.",
            self.connections_accepted.get(),
        );
        header(
            &mut out,
            "roomcast_connections_rejected_total",
            "Upgrades or connections turned away, by reason.",
            "counter",
        );
        for (i, reason) in REJECTIONS.iter().enumerate() {
            let _ = writeln!(
                out,
                "roomcast_connections_rejected_total{{reason=\"{reason}\"}} {}",
                self.rejected[i].get()
            );
        }
        header(
            &mut out,
            "roomcast_accept_refused_total",
            "Sockets closed right after accept, by reason (per_ip: the address holds limits.max_connections_per_ip sockets; pending: limits.max_pending_handshakes sockets wait for their request head).",
            "counter",
        );
        for (i, reason) in ACCEPT_REFUSALS.iter().enumerate() {
            let _ = writeln!(
                out,
                "roomcast_accept_refused_total{{reason=\"{reason}\"}} {}",
                self.accept_refused[i].get()
            );
        }
        gauge(
            &mut out,
            "roomcast_pending_handshakes",
            "Sockets waiting for (the rest of) a request head.",
            self.pending_handshakes.get(),
        );
        header(
            &mut out,
            "roomcast_http_timeouts_total",
            "HTTP connections closed by a timeout, by kind (header: request head; body: request body; idle: keep-alive wait).",
            "counter",
        );
        for (i, kind) in HTTP_TIMEOUTS.iter().enumerate() {
            let _ = writeln!(
                out,
                "roomcast_http_timeouts_total{{kind=\"{kind}\"}} {}",
                self.http_timeouts[i].get()
            );
        }
        header(
            &mut out,
            "roomcast_frames_in_total",
            "Client frames received, by type.",
            "counter",
        );
        let client_types = ClientFrame::KINDS.iter().chain(std::iter::once(&"invalid"));
        for (i, t) in client_types.enumerate() {
            let _ = writeln!(
                out,
                "roomcast_frames_in_total{{type=\"{t}\"}} {}",
                self.frames_in[i].get()
            );
        }
        header(
            &mut out,
            "roomcast_frames_out_total",
            "Server frames queued to clients, by type.",
            "counter",
        );
        for (i, t) in SERVER_TYPES.iter().enumerate() {
            let _ = writeln!(
                out,
                "roomcast_frames_out_total{{type=\"{t}\"}} {}",
                self.frames_out[i].get()
            );
        }
        header(
            &mut out,
            "roomcast_disconnects_total",
            "Connections ended, by close code (none: no close frame).",
            "counter",
        );
        for (i, counter) in self.disconnects.iter().enumerate() {
            let label = match CLOSE_CODES.get(i) {
                Some(0) => "none".to_string(),
                Some(code) => code.to_string(),
                None => "other".to_string(),
            };
            let _ = writeln!(
                out,
                "roomcast_disconnects_total{{code=\"{label}\"}} {}",
                counter.get()
            );
        }
        gauge(
            &mut out,
            "roomcast_rooms",
            "Rooms with at least one member on this node.",
            self.rooms.get(),
        );
        gauge(
            &mut out,
            "roomcast_subscriptions",
            "Room memberships on this node.",
            self.subscriptions.get(),
        );
        counter(
            &mut out,
            "roomcast_messages_published_total",
            "Messages published through this node.",
            self.published.get(),
        );
        counter(
            &mut out,
            "roomcast_messages_delivered_total",
            "Room messages queued to members on this node.",
            self.deliveries.get(),
        );
        counter(
            &mut out,
            "roomcast_messages_written_directly_total",
            "Of those, messages the fan-out wrote straight to the member's socket (nothing was queued for it).",
            self.deliveries_direct.get(),
        );
        histogram(
            &mut out,
            "roomcast_publish_to_deliver_seconds",
            "From publish to queueing for local members.",
            &self.publish_to_deliver,
        );
        histogram(
            &mut out,
            "roomcast_broker_publish_seconds",
            "Broker append-and-publish latency.",
            &self.broker_publish,
        );
        counter(
            &mut out,
            "roomcast_broker_errors_total",
            "Broker calls that failed (nothing stored).",
            self.broker_errors.get(),
        );
        counter(
            &mut out,
            "roomcast_history_reads_total",
            "Room history reads (joins and recoveries).",
            self.history_reads.get(),
        );
        header(
            &mut out,
            "roomcast_recovery_total",
            "Recoveries asked for with since or resume, by outcome.",
            "counter",
        );
        let _ = writeln!(
            out,
            "roomcast_recovery_total{{outcome=\"recovered\"}} {}",
            self.recovered.get()
        );
        let _ = writeln!(
            out,
            "roomcast_recovery_total{{outcome=\"not_recovered\"}} {}",
            self.not_recovered.get()
        );
        header(
            &mut out,
            "roomcast_resumes_total",
            "Session resumes, by outcome.",
            "counter",
        );
        let _ = writeln!(
            out,
            "roomcast_resumes_total{{outcome=\"resumed\"}} {}",
            self.resumes_ok.get()
        );
        let _ = writeln!(
            out,
            "roomcast_resumes_total{{outcome=\"refused\"}} {}",
            self.resumes_failed.get()
        );
        counter(
            &mut out,
            "roomcast_rate_limited_total",
            "Frames refused by the per-connection rate limit.",
            self.rate_limited.get(),
        );
        counter(
            &mut out,
            "roomcast_outbound_overflows_total",
            "Connections closed as slow consumers (4508).",
            self.outbound_overflows.get(),
        );
        counter(
            &mut out,
            "roomcast_direct_messages_total",
            "Direct messages queued to local connections.",
            self.direct_sent.get(),
        );
        counter(
            &mut out,
            "roomcast_api_requests_total",
            "HTTP API requests.",
            self.api_requests.get(),
        );
        counter(
            &mut out,
            "roomcast_api_unauthorized_total",
            "HTTP API requests refused for a missing or wrong key.",
            self.api_unauthorized.get(),
        );
        gauge(
            &mut out,
            "roomcast_draining",
            "1 while the node drains.",
            self.draining.get(),
        );
        header(
            &mut out,
            "roomcast_control_routed_total",
            "Direct messages and disconnects sent to other nodes, by route.",
            "counter",
        );
        let _ = writeln!(
            out,
            "roomcast_control_routed_total{{route=\"owner\"}} {}",
            self.routed_to_node.get()
        );
        let _ = writeln!(
            out,
            "roomcast_control_routed_total{{route=\"all\"}} {}",
            self.routed_to_all.get()
        );
        counter(
            &mut out,
            "roomcast_control_received_total",
            "Direct messages and disconnects this node received from the cluster.",
            self.control_received.get(),
        );
        header(
            &mut out,
            "roomcast_proxy_calls_total",
            "Calls to the application's backend, by call and result.",
            "counter",
        );
        for call in crate::proxy::Call::ALL {
            for (i, result) in PROXY_RESULTS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "roomcast_proxy_calls_total{{call=\"{}\",result=\"{result}\"}} {}",
                    call.name(),
                    self.proxy_calls[call as usize][i].get()
                );
            }
        }
        header(
            &mut out,
            "roomcast_proxy_duration_seconds",
            "Duration of calls to the application's backend, retries included.",
            "histogram",
        );
        for call in crate::proxy::Call::ALL {
            let label = format!("call=\"{}\"", call.name());
            histogram_series(
                &mut out,
                "roomcast_proxy_duration_seconds",
                &label,
                &self.proxy_duration[call as usize],
            );
        }
        header(
            &mut out,
            "roomcast_config_reloads_total",
            "Configuration reloads (SIGHUP or file change), by result.",
            "counter",
        );
        let _ = writeln!(
            out,
            "roomcast_config_reloads_total{{result=\"applied\"}} {}",
            self.reloads_applied.get()
        );
        let _ = writeln!(
            out,
            "roomcast_config_reloads_total{{result=\"refused\"}} {}",
            self.reloads_refused.get()
        );
        out
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn counter(out: &mut String, name: &str, help: &str, v: u64) {
    header(out, name, help, "counter");
    let _ = writeln!(out, "{name} {v}");
}

fn gauge(out: &mut String, name: &str, help: &str, v: i64) {
    header(out, name, help, "gauge");
    let _ = writeln!(out, "{name} {v}");
}

fn histogram(out: &mut String, name: &str, help: &str, h: &Histogram) {
    header(out, name, help, "histogram");
    histogram_series(out, name, "", h);
}

/// One histogram's series; `labels` (`a="b"`) are added to each.
fn histogram_series(out: &mut String, name: &str, labels: &str, h: &Histogram) {
    let (sep, braces) = if labels.is_empty() {
        ("", String::new())
    } else {
        (",", format!("{{{labels}}}"))
    };
    let mut cumulative = 0;
    for (i, b) in BUCKETS.iter().enumerate() {
        cumulative += h.buckets[i].load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cumulative}");
    }
    let count = h.count.load(Relaxed);
    let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
    let _ = writeln!(
        out,
        "{name}_sum{braces} {}",
        h.sum_us.load(Relaxed) as f64 / 1e6
    );
    let _ = writeln!(out, "{name}_count{braces} {count}");
}

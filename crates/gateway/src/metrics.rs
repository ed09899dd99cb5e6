//! Prometheus metrics of one node, served as text on `/metrics`.
//!
//! Every handle is registered once, at construction, in a
//! `prometheus-client` registry; labelled children are resolved then too and
//! kept in arrays indexed by the label's position, so recording is one
//! relaxed atomic increment, with no lookup and no lock (the latency
//! histograms take a short mutex, once per message). The fan-out path counts
//! deliveries once per message (adding the member count), not once per
//! member. Values read at scrape time (tasks, Redis, presence, webhooks) are
//! added by the `/metrics` handler (server.rs) with a
//! [`Snapshot`](roomcast_service::metrics::Snapshot).

use roomcast_protocol::{ClientFrame, ServerFrame};
use roomcast_service::metrics::{counter, encode, gauge, labelled, Family, Registry};
pub use roomcast_service::metrics::{Counter, Gauge, Histogram, CONTENT_TYPE};

/// Upper bounds, in seconds, of the latency histograms' buckets.
const BUCKETS: [f64; 13] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
];

fn histogram() -> Histogram {
    Histogram::new(&BUCKETS)
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
    /// `limits.max_connections_per_user` reached (closed with 4409).
    UserLimit,
}
const REJECTIONS: [&str; 7] = [
    "max_connections",
    "max_connections_per_ip",
    "draining",
    "origin",
    "bad_request",
    "unauthorized",
    "user_limit",
];

/// How a token refresh ended (`roomcast_token_refreshes_total{outcome}`).
#[derive(Clone, Copy)]
pub enum RefreshOutcome {
    Refreshed = 0,
    Refused,
    ProxyExtended,
    ProxyFailed,
}

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
const SERVER_TYPES: [&str; 14] = ServerFrame::KINDS;
/// Close codes counted by `roomcast_disconnects_total`, then `none` (the
/// socket ended without a close frame) and `other`.
const CLOSE_CODES: [u16; 17] = [
    1000, 1001, 1002, 1005, 1007, 1009, 1011, 1012, 1013, 4400, 4401, 4403, 4408, 4409, 4429, 4508,
    0,
];
const CLOSE_LABELS: usize = CLOSE_CODES.len() + 1;

const PROXY_RESULTS: [&str; 3] = ["allow", "deny", "failure"];

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
    /// Publishes answered from an idempotency key seen before.
    pub publish_duplicates: Counter,
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
    /// Token refreshes by outcome: `refresh` frames answered `refreshed`,
    /// refused (`unauthorized` or `forbidden`), and the refresh proxy's
    /// extensions and failures.
    refreshes: [Counter; 4],
    pub api_requests: Counter,
    pub api_unauthorized: Counter,
    pub draining: Gauge,
    pub routed_to_node: Counter,
    pub routed_to_all: Counter,
    pub control_received: Counter,
    /// Proxy calls by call and result (`allow`, `deny`, `failure`).
    proxy_calls: [[Counter; 3]; 5],
    proxy_duration: [Histogram; 5],
    /// Configuration reloads: applied, refused.
    pub reloads_applied: Counter,
    pub reloads_refused: Counter,
    /// Every family above, for [`Metrics::render`].
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// The node's metrics, each registered under its exposed name (help
    /// without its final period, counters without `_total`: the registry
    /// and the encoder add them).
    pub fn new() -> Metrics {
        let mut r = Registry::default();
        let reg = &mut r;
        let connections = gauge(reg, "roomcast_connections", "Open WebSocket connections");
        let connections_accepted =
            counter(reg, "roomcast_connections_accepted", "Connections accepted");
        let rejected = labelled(
            reg,
            "roomcast_connections_rejected",
            "Upgrades or connections turned away, by reason",
            Family::default(),
            "reason",
            REJECTIONS,
        );
        let accept_refused = labelled(
            reg,
            "roomcast_accept_refused",
            "Sockets closed right after accept, by reason (per_ip: the address holds limits.max_connections_per_ip sockets; pending: limits.max_pending_handshakes sockets wait for their request head)",
            Family::default(),
            "reason",
            ACCEPT_REFUSALS,
        );
        let pending_handshakes = gauge(
            reg,
            "roomcast_pending_handshakes",
            "Sockets waiting for (the rest of) a request head",
        );
        let http_timeouts = labelled(
            reg,
            "roomcast_http_timeouts",
            "HTTP connections closed by a timeout, by kind (header: request head; body: request body; idle: keep-alive wait)",
            Family::default(),
            "kind",
            HTTP_TIMEOUTS,
        );
        let client_types: [&str; CLIENT_TYPES] =
            std::array::from_fn(|i| ClientFrame::KINDS.get(i).copied().unwrap_or("invalid"));
        let frames_in = labelled(
            reg,
            "roomcast_frames_in",
            "Client frames received, by type",
            Family::default(),
            "type",
            client_types,
        );
        let frames_out = labelled(
            reg,
            "roomcast_frames_out",
            "Server frames queued to clients, by type",
            Family::default(),
            "type",
            SERVER_TYPES,
        );
        let close_labels: [String; CLOSE_LABELS] =
            std::array::from_fn(|i| match CLOSE_CODES.get(i) {
                Some(0) => "none".to_string(),
                Some(code) => code.to_string(),
                None => "other".to_string(),
            });
        let disconnects = labelled(
            reg,
            "roomcast_disconnects",
            "Connections ended, by close code (none: no close frame)",
            Family::default(),
            "code",
            close_labels.each_ref().map(String::as_str),
        );
        let rooms = gauge(
            reg,
            "roomcast_rooms",
            "Rooms with at least one member on this node",
        );
        let subscriptions = gauge(
            reg,
            "roomcast_subscriptions",
            "Room memberships on this node",
        );
        let published = counter(
            reg,
            "roomcast_messages_published",
            "Messages published through this node",
        );
        let publish_duplicates = counter(
            reg,
            "roomcast_publish_duplicates",
            "Publishes with an idempotency key seen within the window: answered as the first, not stored again",
        );
        let deliveries = counter(
            reg,
            "roomcast_messages_delivered",
            "Room messages queued to members on this node",
        );
        let deliveries_direct = counter(
            reg,
            "roomcast_messages_written_directly",
            "Of those, messages the fan-out wrote straight to the member's socket (nothing was queued for it)",
        );
        let publish_to_deliver = histogram();
        reg.register(
            "roomcast_publish_to_deliver_seconds",
            "From publish to queueing for local members",
            publish_to_deliver.clone(),
        );
        let broker_publish = histogram();
        reg.register(
            "roomcast_broker_publish_seconds",
            "Broker append-and-publish latency",
            broker_publish.clone(),
        );
        let broker_errors = counter(
            reg,
            "roomcast_broker_errors",
            "Broker calls that failed (nothing stored)",
        );
        let history_reads = counter(
            reg,
            "roomcast_history_reads",
            "Room history reads (joins and recoveries)",
        );
        let [recovered, not_recovered] = labelled(
            reg,
            "roomcast_recovery",
            "Recoveries asked for with since or resume, by outcome",
            Family::default(),
            "outcome",
            ["recovered", "not_recovered"],
        );
        let [resumes_ok, resumes_failed] = labelled(
            reg,
            "roomcast_resumes",
            "Session resumes, by outcome",
            Family::default(),
            "outcome",
            ["resumed", "refused"],
        );
        let refreshes = labelled(
            reg,
            "roomcast_token_refreshes",
            "Token refreshes, by outcome: refresh frames accepted or refused, refresh proxy extensions and failures",
            Family::default(),
            "outcome",
            ["refreshed", "refused", "proxy_extended", "proxy_failed"],
        );
        let rate_limited = counter(
            reg,
            "roomcast_rate_limited",
            "Frames refused by the per-connection rate limit",
        );
        let outbound_overflows = counter(
            reg,
            "roomcast_outbound_overflows",
            "Connections closed as slow consumers (4508)",
        );
        let direct_sent = counter(
            reg,
            "roomcast_direct_messages",
            "Direct messages queued to local connections",
        );
        let api_requests = counter(reg, "roomcast_api_requests", "HTTP API requests");
        let api_unauthorized = counter(
            reg,
            "roomcast_api_unauthorized",
            "HTTP API requests refused for a missing or wrong key",
        );
        let draining = gauge(reg, "roomcast_draining", "1 while the node drains");
        let [routed_to_node, routed_to_all] = labelled(
            reg,
            "roomcast_control_routed",
            "Direct messages and disconnects sent to other nodes, by route",
            Family::default(),
            "route",
            ["owner", "all"],
        );
        let control_received = counter(
            reg,
            "roomcast_control_received",
            "Direct messages and disconnects this node received from the cluster",
        );
        let calls = crate::proxy::Call::ALL.map(|call| call.name());
        let proxy_family = Family::<_, Counter>::default();
        let proxy_calls = calls.map(|call| {
            PROXY_RESULTS.map(|result| {
                proxy_family.get_or_create_owned(&vec![
                    ("call", call.to_string()),
                    ("result", result.to_string()),
                ])
            })
        });
        reg.register(
            "roomcast_proxy_calls",
            "Calls to the application's backend, by call and result",
            proxy_family,
        );
        let proxy_duration = labelled(
            reg,
            "roomcast_proxy_duration_seconds",
            "Duration of calls to the application's backend, retries included",
            Family::new_with_constructor(histogram as fn() -> Histogram),
            "call",
            calls,
        );
        let [reloads_applied, reloads_refused] = labelled(
            reg,
            "roomcast_config_reloads",
            "Configuration reloads (SIGHUP or file change), by result",
            Family::default(),
            "result",
            ["applied", "refused"],
        );
        Metrics {
            connections,
            connections_accepted,
            rejected,
            accept_refused,
            http_timeouts,
            pending_handshakes,
            frames_in,
            frames_out,
            disconnects,
            rooms,
            subscriptions,
            published,
            publish_duplicates,
            deliveries,
            deliveries_direct,
            publish_to_deliver,
            broker_publish,
            broker_errors,
            history_reads,
            recovered,
            not_recovered,
            rate_limited,
            outbound_overflows,
            direct_sent,
            resumes_ok,
            resumes_failed,
            refreshes,
            api_requests,
            api_unauthorized,
            draining,
            routed_to_node,
            routed_to_all,
            control_received,
            proxy_calls,
            proxy_duration,
            reloads_applied,
            reloads_refused,
            registry: r,
        }
    }

    pub fn refresh(&self, outcome: RefreshOutcome) {
        self.refreshes[outcome as usize].inc();
    }

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
        let mut out = String::with_capacity(16 * 1024);
        encode(&mut out, &self.registry);
        out
    }
}

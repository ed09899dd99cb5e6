//! Counters of the presence service and their Prometheus exposition.
//!
//! Counters are `prometheus-client` handles registered once, at
//! construction, and bumped on the request path; gauges (nodes, sessions,
//! rooms, queued events) are read from the state at scrape time rather than
//! kept in step with it, so they cannot drift. Every name starts with
//! `roomcast_presence_`, except the webhooks' (`roomcast_webhook_`), which
//! are named as on a gateway that sends its own.

use roomcast_hooks::webhook::WebhookStats;
pub use roomcast_service::metrics::Counter;
use roomcast_service::metrics::{counter, encode, Registry, Snapshot};

use crate::state::Counts;

/// The service's counters (help without its final period, names without
/// `_total`: the registry and the encoder add them).
#[derive(Debug)]
pub struct Metrics {
    pub sync_requests: Counter,
    pub lookup_requests: Counter,
    pub take_requests: Counter,
    pub full_syncs: Counter,
    pub silent_syncs: Counter,
    pub need_full: Counter,
    pub ops_applied: Counter,
    pub ops_ignored: Counter,
    pub purges: Counter,
    pub sessions_purged: Counter,
    pub handoffs_expired: Counter,
    pub events_published: Counter,
    pub events_dropped: Counter,
    pub redis_errors: Counter,
    pub parked: Counter,
    pub taken: Counter,
    pub take_misses: Counter,
    pub park_requests: Counter,
    pub claims: Counter,
    pub claims_displaced: Counter,
    pub takes_repeated: Counter,
    pub parks_superseded: Counter,
    pub unauthorized: Counter,
    registry: Registry,
}

/// What the scrape reads besides the counters.
pub struct Gauges {
    pub counts: Counts,
    pub events_queued: usize,
    pub redis_connected: bool,
    /// The webhooks' counters (zero when they are off).
    pub webhooks: WebhookStats,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let r = &mut registry;
        Metrics {
            sync_requests: counter(
                r,
                "roomcast_presence_sync_requests",
                "Sync requests received",
            ),
            lookup_requests: counter(
                r,
                "roomcast_presence_lookup_requests",
                "Lookup requests received (a gateway batches concurrent lookups)",
            ),
            take_requests: counter(
                r,
                "roomcast_presence_take_requests",
                "Batched take requests received (a gateway batches concurrent takes)",
            ),
            full_syncs: counter(
                r,
                "roomcast_presence_full_syncs",
                "Full syncs applied",
            ),
            silent_syncs: counter(
                r,
                "roomcast_presence_silent_syncs",
                "Full syncs applied without events (rebuild after a restart)",
            ),
            need_full: counter(
                r,
                "roomcast_presence_need_full",
                "Syncs answered with need_full",
            ),
            ops_applied: counter(
                r,
                "roomcast_presence_ops_applied",
                "Ops applied",
            ),
            ops_ignored: counter(
                r,
                "roomcast_presence_ops_ignored",
                "Ops ignored (invalid, stale or already applied)",
            ),
            purges: counter(
                r,
                "roomcast_presence_purges",
                "Nodes purged after their lease expired",
            ),
            sessions_purged: counter(
                r,
                "roomcast_presence_sessions_purged",
                "Sessions removed with their node's expired lease",
            ),
            handoffs_expired: counter(
                r,
                "roomcast_presence_handoffs_expired",
                "Handed-off sessions not taken within their grace",
            ),
            events_published: counter(
                r,
                "roomcast_presence_events_published",
                "Presence events published to Redis",
            ),
            events_dropped: counter(
                r,
                "roomcast_presence_events_dropped",
                "Presence events dropped because the queue was full",
            ),
            redis_errors: counter(
                r,
                "roomcast_presence_redis_errors",
                "Failed Redis commands",
            ),
            parked: counter(
                r,
                "roomcast_presence_sessions_parked",
                "Session records parked",
            ),
            taken: counter(
                r,
                "roomcast_presence_sessions_taken",
                "Session records taken",
            ),
            take_misses: counter(
                r,
                "roomcast_presence_session_take_misses",
                "Takes of a session with no record",
            ),
            park_requests: counter(
                r,
                "roomcast_presence_park_requests",
                "Batched park requests (POST /v1/park)",
            ),
            claims: counter(
                r,
                "roomcast_presence_session_claims",
                "Sessions claimed by a node resuming them on the token's word",
            ),
            claims_displaced: counter(
                r,
                "roomcast_presence_session_claims_displaced",
                "Claims that replaced another node's claim (two resumes on the token's word)",
            ),
            takes_repeated: counter(
                r,
                "roomcast_presence_session_takes_repeated",
                "Sessions of a take asked again with its token (a gateway's retry): answered as the first time",
            ),
            parks_superseded: counter(
                r,
                "roomcast_presence_session_parks_superseded",
                "Parks refused: another node claimed the session since",
            ),
            unauthorized: counter(
                r,
                "roomcast_presence_unauthorized",
                "Requests refused for a missing or wrong key",
            ),
            registry,
        }
    }

    /// Prometheus text exposition format.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut scrape = Snapshot::default();
        let c = &gauges.counts;
        let gauge_rows = [
            (
                "roomcast_presence_nodes",
                "Gateway nodes holding a lease",
                c.nodes,
            ),
            (
                "roomcast_presence_sessions",
                "Sessions known cluster-wide",
                c.sessions,
            ),
            (
                "roomcast_presence_rooms",
                "Rooms with at least one member",
                c.rooms,
            ),
            (
                "roomcast_presence_handoffs",
                "Sessions waiting in a handoff grace",
                c.handoffs,
            ),
            (
                "roomcast_presence_events_queued",
                "Presence events waiting to be published",
                gauges.events_queued,
            ),
            (
                "roomcast_presence_redis_connected",
                "1 when connected to Redis",
                usize::from(gauges.redis_connected),
            ),
        ];
        for (name, help, value) in gauge_rows {
            scrape.gauge(name, help, value as i64);
        }
        gauges.webhooks.register(scrape.registry());
        let mut out = String::with_capacity(4096);
        scrape.encode(&mut out);
        encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_counters_are_rendered_with_their_own_prefix() {
        let gauges = Gauges {
            counts: Counts::default(),
            events_queued: 0,
            redis_connected: true,
            webhooks: WebhookStats {
                events_sent: 7,
                batches_sent: 2,
                failures: 3,
                dropped: 1,
                queued: 4,
            },
        };
        let text = Metrics::default().render(&gauges);
        for line in [
            "roomcast_webhook_events_sent_total 7",
            "roomcast_webhook_batches_sent_total 2",
            "roomcast_webhook_failures_total 3",
            "roomcast_webhook_events_dropped_total 1",
            "roomcast_webhook_events_queued 4",
            "# TYPE roomcast_webhook_failures_total counter",
            "# TYPE roomcast_webhook_events_queued gauge",
            "roomcast_presence_redis_connected 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
    }
}

//! Counters of the presence service and their Prometheus text rendering.
//!
//! Plain atomics bumped on the request path; gauges (nodes, sessions,
//! rooms, queued events) are read from the state at scrape time rather than
//! kept in step with it, so they cannot drift. Every name starts with
//! `roomcast_presence_`, except the webhooks' (`roomcast_webhook_`), which
//! are named as on a gateway that sends its own.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use roomcast_hooks::webhook::WebhookStats;

use crate::state::Counts;

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
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
}

/// What the scrape reads besides the counters.
pub struct Gauges {
    pub counts: Counts,
    pub events_queued: usize,
    pub redis_connected: bool,
    /// The webhooks' counters (zero when they are off).
    pub webhooks: WebhookStats,
}

impl Metrics {
    /// Prometheus text exposition format.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::with_capacity(4096);
        let c = &gauges.counts;
        let gauge_rows: [(&str, &str, u64); 6] = [
            ("nodes", "Gateway nodes holding a lease.", c.nodes as u64),
            (
                "sessions",
                "Sessions known cluster-wide.",
                c.sessions as u64,
            ),
            ("rooms", "Rooms with at least one member.", c.rooms as u64),
            (
                "handoffs",
                "Sessions waiting in a handoff grace.",
                c.handoffs as u64,
            ),
            (
                "events_queued",
                "Presence events waiting to be published.",
                gauges.events_queued as u64,
            ),
            (
                "redis_connected",
                "1 when connected to Redis.",
                gauges.redis_connected as u64,
            ),
        ];
        for (name, help, value) in gauge_rows {
            let _ = writeln!(out, "# HELP roomcast_presence_{name} {help}");
            let _ = writeln!(out, "# TYPE roomcast_presence_{name} gauge");
            let _ = writeln!(out, "roomcast_presence_{name} {value}");
        }
        let counter_rows: [(&str, &str, &Counter); 23] = [
            (
                "sync_requests_total",
                "Sync requests received.",
                &self.sync_requests,
            ),
            (
                "lookup_requests_total",
                "Lookup requests received (a gateway batches concurrent lookups).",
                &self.lookup_requests,
            ),
            (
                "take_requests_total",
                "Batched take requests received (a gateway batches concurrent takes).",
                &self.take_requests,
            ),
            ("full_syncs_total", "Full syncs applied.", &self.full_syncs),
            (
                "silent_syncs_total",
                "Full syncs applied without events (rebuild after a restart).",
                &self.silent_syncs,
            ),
            (
                "need_full_total",
                "Syncs answered with need_full.",
                &self.need_full,
            ),
            ("ops_applied_total", "Ops applied.", &self.ops_applied),
            (
                "ops_ignored_total",
                "Ops ignored (invalid, stale or already applied).",
                &self.ops_ignored,
            ),
            (
                "purges_total",
                "Nodes purged after their lease expired.",
                &self.purges,
            ),
            (
                "sessions_purged_total",
                "Sessions removed with their node's expired lease.",
                &self.sessions_purged,
            ),
            (
                "handoffs_expired_total",
                "Handed-off sessions not taken within their grace.",
                &self.handoffs_expired,
            ),
            (
                "events_published_total",
                "Presence events published to Redis.",
                &self.events_published,
            ),
            (
                "events_dropped_total",
                "Presence events dropped because the queue was full.",
                &self.events_dropped,
            ),
            (
                "redis_errors_total",
                "Failed Redis commands.",
                &self.redis_errors,
            ),
            (
                "sessions_parked_total",
                "Session records parked.",
                &self.parked,
            ),
            (
                "sessions_taken_total",
                "Session records taken.",
                &self.taken,
            ),
            (
                "session_take_misses_total",
                "Takes of a session with no record.",
                &self.take_misses,
            ),
            (
                "park_requests_total",
                "Batched park requests (POST /v1/park).",
                &self.park_requests,
            ),
            (
                "session_claims_total",
                "Sessions claimed by a node resuming them on the token's word.",
                &self.claims,
            ),
            (
                "session_claims_displaced_total",
                "Claims that replaced another node's claim (two resumes on the token's word).",
                &self.claims_displaced,
            ),
            (
                "session_takes_repeated_total",
                "Sessions of a take asked again with its token (a gateway's retry): answered as the first time.",
                &self.takes_repeated,
            ),
            (
                "session_parks_superseded_total",
                "Parks refused: another node claimed the session since.",
                &self.parks_superseded,
            ),
            (
                "unauthorized_total",
                "Requests refused for a missing or wrong key.",
                &self.unauthorized,
            ),
        ];
        for (name, help, counter) in counter_rows {
            let _ = writeln!(out, "# HELP roomcast_presence_{name} {help}");
            let _ = writeln!(out, "# TYPE roomcast_presence_{name} counter");
            let _ = writeln!(out, "roomcast_presence_{name} {}", counter.get());
        }
        gauges.webhooks.render(&mut out);
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

//! [`WebhookStats`]: the counters of the webhook sender, and their metric
//! families.

use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// Counters of a [`Webhooks`](super::Webhooks), for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WebhookStats {
    /// Events in batches the backend accepted.
    pub events_sent: u64,
    /// Batches the backend accepted.
    pub batches_sent: u64,
    /// Attempts that failed (an answer other than 2xx, no answer, a
    /// transport error); each is followed by a retry.
    pub failures: u64,
    /// Events dropped because `max_queued` were waiting.
    pub dropped: u64,
    /// Events waiting, or in the batch being sent.
    pub queued: u64,
}

impl WebhookStats {
    /// Registers the `roomcast_webhook_*` families with these values, for
    /// one scrape (help without its final period: the registry adds it).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "roomcast_webhook_events_queued",
            "Webhook events waiting to be delivered",
            ConstGauge::new(self.queued as i64),
        );
        let counters = [
            (
                "roomcast_webhook_events_sent",
                "Webhook events the backend accepted",
                self.events_sent,
            ),
            (
                "roomcast_webhook_batches_sent",
                "Webhook requests the backend accepted",
                self.batches_sent,
            ),
            (
                "roomcast_webhook_failures",
                "Webhook requests that failed (not 2xx, no answer in time, transport error); each is retried",
                self.failures,
            ),
            (
                "roomcast_webhook_events_dropped",
                "Webhook events dropped because the queue was full",
                self.dropped,
            ),
        ];
        for (name, help, value) in counters {
            registry.register(name, help, ConstCounter::new(value));
        }
    }
}

//! Webhooks: events told to the backend after they happened, in signed,
//! batched POSTs (the contract is the "Webhooks" section of
//! `docs/hooks.md`).
//!
//! [`Webhooks::push`] never waits: it appends to a bounded in-memory queue
//! (beyond `max_queued` the oldest event is dropped and counted). One task
//! sends the queue in order, one batch at a time: a batch holds up to
//! `batch_max` events and leaves at most `batch_delay_ms` after its first
//! event was queued. A batch the backend does not accept (any answer but
//! 2xx, or none within `timeout_ms`) is sent again, the same events with the
//! same ids, after an exponential backoff with jitter, until it is accepted;
//! the next batch waits for it, so the backend sees events in the order they
//! were pushed.
//!
//! ```no_run
//! # async fn demo(config: roomcast_hooks::webhook::WebhookConfig) {
//! use roomcast_hooks::http::Backend;
//! use roomcast_hooks::webhook::{WebhookEvent, Webhooks};
//! if let Some(webhooks) = Webhooks::start(config, Backend::new()) {
//!     webhooks.push(WebhookEvent::room_occupied("chat:1"));
//!     webhooks.push(WebhookEvent::presence_join("chat:1", "alice", "s1"));
//!     let stats = webhooks.stats(); // for metrics
//!     webhooks.shutdown(std::time::Duration::from_secs(2)).await; // at exit
//! }
//! # }
//! ```
//!
//! The module's parts, one concept each, all re-exported here:
//!
//! - `event`: [`WebhookEvent`], [`EventType`], [`EndReason`] and the
//!   request body, [`Batch`];
//! - `config`: [`WebhookConfig`], the `[webhooks]` section, and its bounds;
//! - `stats`: [`WebhookStats`], the counters behind the metrics;
//! - `sender`: [`Webhooks`], the queue and the task that batches, signs,
//!   sends and retries.

mod config;
mod event;
mod sender;
mod stats;

pub use config::{WebhookConfig, MAX_BATCH_DELAY_MS, MAX_RETRY_MS, MAX_TIMEOUT_MS};
pub use event::{Batch, EndReason, EventType, WebhookEvent};
pub use sender::{backoff, Webhooks};
pub use stats::WebhookStats;

#[cfg(test)]
mod tests;

//! How a node stops: readiness turns 503, new upgrades are refused, every
//! client is told to reconnect elsewhere and closed with 1012 in spread-out
//! batches, and the process exits within the drain timeout.
//!
//! [`Drain`] is the one shutdown signal of the node, passed to whatever
//! needs to know (the upgrade handler, `/readyz`, the server).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use roomcast_protocol::{close, ReconnectReason, ServerFrame};
use tokio::sync::Notify;

use crate::heartbeat::Registry;
use crate::metrics::Metrics;

#[derive(Default)]
pub struct Drain {
    draining: AtomicBool,
    started: Notify,
}

/// How often a batch of connections is closed during the drain window.
const STEP: Duration = Duration::from_millis(100);

impl Drain {
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Starts draining (idempotent).
    pub fn start(&self) {
        if !self.draining.swap(true, Ordering::AcqRel) {
            self.started.notify_waiters();
        }
    }

    /// Resolves once draining has started.
    pub async fn started(&self) {
        loop {
            let notified = self.started.notified();
            if self.is_draining() {
                return;
            }
            notified.await;
        }
    }

    /// Sends every connection `reconnect` then close 1012, spread over
    /// `window`, and waits (up to `deadline`) for all of them to be gone.
    pub async fn run(
        &self,
        registry: &Arc<Registry>,
        metrics: &Metrics,
        window: Duration,
        deadline: Instant,
    ) {
        metrics.draining.set(1);
        let conns = registry.all();
        let steps = (window.as_millis() / STEP.as_millis()).max(1) as usize;
        let per_step = conns.len().div_ceil(steps).max(1);
        tracing::info!(connections = conns.len(), ?window, "draining");
        for (i, chunk) in conns.chunks(per_step).enumerate() {
            if i > 0 {
                tokio::time::sleep(STEP).await;
            }
            for conn in chunk {
                // A little jitter on top of the batches, so reconnects from
                // one batch do not land on the other nodes all at once.
                let after_ms = rand::thread_rng().gen_range(0..=250);
                let _ = conn.send(&ServerFrame::Reconnect {
                    reason: ReconnectReason::Shutdown,
                    after_ms,
                });
                conn.outbox.close(close::RESTART, "node shutting down");
            }
        }
        while !registry.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::info!(left = registry.len(), "drain finished");
    }
}

//! The sweeper: every ~500 ms, purge nodes whose lease expired and sessions
//! whose handoff grace ended, and queue the events that causes (leaves,
//! rooms vacated, sessions ended).
//!
//! It is the only place time moves the state forward; everything else
//! changes it in answer to a gateway's sync.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::server::App;
use crate::shutdown::Shutdown;

pub const INTERVAL: Duration = Duration::from_millis(500);

pub async fn run(app: Arc<App>, mut shutdown: Shutdown) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait() => return,
        }
        let sweep = {
            let mut state = app.state.lock();
            let mut events = Vec::new();
            let sweep = state.sweep(Instant::now(), &mut events);
            app.publish(events);
            sweep
        };
        if sweep.nodes_purged > 0 {
            tracing::warn!(
                nodes = sweep.nodes_purged,
                sessions = sweep.sessions_purged,
                "node lease expired: sessions purged"
            );
        }
        if sweep.handoffs_expired > 0 {
            tracing::info!(sessions = sweep.handoffs_expired, "handoff grace ended");
        }
        app.metrics.purges.add(sweep.nodes_purged as u64);
        app.metrics
            .sessions_purged
            .add(sweep.sessions_purged as u64);
        app.metrics
            .handoffs_expired
            .add(sweep.handoffs_expired as u64);
    }
}

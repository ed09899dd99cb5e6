//! Liveness of every connection, kept by a few shard tickers instead of a
//! timer per connection.
//!
//! Each live connection is registered in one of [`SHARDS`] slabs. One task
//! per shard wakes every tick ([`tick_for`]: a quarter of the shorter of
//! `ping_interval` and `pong_timeout`, within 50 ms and 2 s) and walks its
//! slab: a connection silent for `ping_interval` gets a WebSocket ping; one
//! still silent `pong_timeout` after that ping is closed with 4408. A ping or
//! a close may come up to one tick late; the walk, which touches every
//! connection, is what an idle node spends most of its time on, so it is
//! done no more often than that precision needs. Any frame from the client counts as a
//! sign of life. The registry is also the node's list of connections, used by
//! drain and stats.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use roomcast_protocol::close;
use slab::Slab;

use crate::handle::{now_ms, ConnHandle};

const SHARDS: usize = 8;

/// How often each shard is walked.
pub fn tick_for(ping_interval: Duration, pong_timeout: Duration) -> Duration {
    (ping_interval.min(pong_timeout) / 4).clamp(Duration::from_millis(50), Duration::from_secs(2))
}

pub struct Registry {
    shards: Vec<Mutex<Slab<Arc<ConnHandle>>>>,
}

/// Where a connection sits in the registry; give it back to `remove`.
#[derive(Debug, Clone, Copy)]
pub struct Slot {
    shard: usize,
    key: usize,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            shards: (0..SHARDS).map(|_| Mutex::new(Slab::new())).collect(),
        }
    }
}

impl Registry {
    pub fn insert(&self, conn: Arc<ConnHandle>) -> Slot {
        let shard = (conn.id as usize) % SHARDS;
        let key = self.shards[shard].lock().insert(conn);
        Slot { shard, key }
    }

    pub fn remove(&self, slot: Slot) {
        let mut shard = self.shards[slot.shard].lock();
        if shard.contains(slot.key) {
            shard.remove(slot.key);
        }
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every registered connection (a snapshot).
    pub fn all(&self) -> Vec<Arc<ConnHandle>> {
        let mut out = Vec::with_capacity(self.len());
        for shard in &self.shards {
            out.extend(shard.lock().iter().map(|(_, c)| c.clone()));
        }
        out
    }

    /// Starts the shard tickers.
    pub fn spawn_tickers(self: &Arc<Self>, ping_interval: Duration, pong_timeout: Duration) {
        let interval_ms = ping_interval.as_millis() as u64;
        let timeout_ms = pong_timeout.as_millis() as u64;
        let tick_every = tick_for(ping_interval, pong_timeout);
        for shard in 0..SHARDS {
            let weak = Arc::downgrade(self);
            tokio::spawn(async move {
                // Spread the shards' wake-ups over one tick.
                tokio::time::sleep(tick_every * shard as u32 / SHARDS as u32).await;
                let mut tick = tokio::time::interval(tick_every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(registry) = weak.upgrade() else {
                        return;
                    };
                    registry.check_shard(shard, now_ms(), interval_ms, timeout_ms);
                }
            });
        }
    }

    fn check_shard(&self, shard: usize, now: u64, interval_ms: u64, timeout_ms: u64) {
        let shard = self.shards[shard].lock();
        for (_, conn) in shard.iter() {
            let seen = conn.last_seen.load(Relaxed);
            let pinged = conn.ping_sent.load(Relaxed);
            if pinged > seen {
                if now.saturating_sub(pinged) >= timeout_ms {
                    conn.outbox.close(close::TIMEOUT, "heartbeat lost");
                }
            } else if now.saturating_sub(seen) >= interval_ms {
                conn.ping_sent.store(now.max(seen + 1), Relaxed);
                conn.outbox.ping();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tick_follows_the_shorter_heartbeat_setting_within_bounds() {
        let ms = Duration::from_millis;
        // The defaults: pong timeout 10 s, ping interval 25 s.
        assert_eq!(tick_for(ms(25_000), ms(10_000)), ms(2_000));
        assert_eq!(tick_for(ms(400), ms(400)), ms(100));
        assert_eq!(tick_for(ms(300), ms(10_000)), ms(75));
        assert_eq!(tick_for(ms(100), ms(100)), ms(50));
    }
}

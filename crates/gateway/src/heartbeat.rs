//! Liveness of every connection, kept by a few shard tickers instead of a
//! timer per connection.
//!
//! Each live connection is registered in one of [`SHARDS`] shards, and one
//! task per shard checks them tick by tick ([`tick_for`]: a quarter of the
//! shorter of `ping_interval` and `pong_timeout`, within 50 ms and 2 s),
//! waking only for the ticks at which one of them is due. A connection
//! silent for `ping_interval` gets a WebSocket ping; one still silent
//! `pong_timeout` after that ping is closed with 4408. Any frame from the
//! client counts as a sign of life. A ping or a close may come up to one
//! tick late.
//!
//! A tick does not walk every connection: each shard keeps a timing wheel,
//! one bucket per tick, and a connection sits in the bucket of the tick at
//! which it is next due (the end of its silence allowance, or of its pong
//! timeout). A tick visits only its bucket: a connection that was heard
//! from meanwhile moves to its new due tick, the others get their ping or
//! their close. Frames from the client only store a timestamp; they never
//! touch the wheel. An idle connection is visited twice per ping interval
//! (for the ping, then to see the pong), a busy one once, instead of once
//! per tick. A connection that goes away leaves its wheel entry behind until
//! that entry's tick comes, and the entry names the connection's id, so a
//! reused slot is not mistaken for it. A ticker sleeps until the first tick
//! whose bucket holds an entry; filing a connection sooner than that wakes
//! it (a node whose connections are pinged together, or that has none,
//! does not wake for the empty ticks between).
//!
//! The ping itself is written straight to the socket when the connection
//! allows it ([`crate::direct_write`]), outside the shard's lock.
//!
//! The registry is also the node's list of connections, used by drain and
//! stats.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;
use roomcast_protocol::close;
use slab::Slab;
use tokio::sync::{mpsc, Notify};

use crate::conn_handle::{now_ms, ConnHandle};
use crate::direct_write::Direct;
use crate::metrics::Counter;

const SHARDS: usize = 8;
/// At most this many ticks per wheel turn (34 minutes at the 2 s tick).
const MAX_BUCKETS: u64 = 1024;

/// How often each shard is walked.
pub fn tick_for(ping_interval: Duration, pong_timeout: Duration) -> Duration {
    (ping_interval.min(pong_timeout) / 4).clamp(Duration::from_millis(50), Duration::from_secs(2))
}

#[derive(Debug, Clone, Copy)]
struct Timing {
    interval_ms: u64,
    timeout_ms: u64,
    tick_ms: u64,
}

impl Timing {
    fn new(ping_interval: Duration, pong_timeout: Duration) -> Timing {
        Timing {
            interval_ms: ping_interval.as_millis() as u64,
            timeout_ms: pong_timeout.as_millis() as u64,
            tick_ms: (tick_for(ping_interval, pong_timeout).as_millis() as u64).max(1),
        }
    }

    /// Buckets in a wheel: enough that any due time is less than one
    /// turn ahead, up to [`MAX_BUCKETS`] (with a longer ping interval a
    /// connection is visited once per turn and filed again).
    fn buckets(&self) -> usize {
        (self.interval_ms.max(self.timeout_ms) / self.tick_ms + 3).min(MAX_BUCKETS) as usize
    }
}

/// One wheel entry: the connection's slab key and the low half of its id
/// (8 bytes per connection). A slot reused by a connection whose id agrees
/// in those 32 bits, four billion connections later, would be visited twice
/// per due time while it lives, which does no harm: every visit decides from
/// the timestamps.
type Entry = (u32, u32);

struct Shard {
    conns: Slab<Arc<ConnHandle>>,
    wheel: Vec<Vec<Entry>>,
    /// The next tick (`now_ms / tick_ms`) to process.
    next_tick: u64,
    /// The tick the shard's ticker sleeps until: the first one after
    /// `next_tick` whose bucket holds an entry ([`NOTHING_DUE`]: none does).
    wake_tick: u64,
}

/// `wake_tick` of a shard whose wheel is empty: its ticker sleeps until a
/// connection is filed.
const NOTHING_DUE: u64 = u64::MAX;

impl Shard {
    /// Files `entry` under the tick at which time `due_ms` has passed,
    /// at least one tick after `current` and less than a turn ahead.
    /// True when that tick comes before the one the ticker sleeps until
    /// (which it now is).
    fn schedule(&mut self, timing: &Timing, current: u64, due_ms: u64, entry: Entry) -> bool {
        let len = self.wheel.len() as u64;
        let tick = due_ms
            .div_ceil(timing.tick_ms)
            .clamp(current + 1, current + len - 1);
        self.wheel[(tick % len) as usize].push(entry);
        if let Some(conn) = self.conns.get(entry.0 as usize) {
            conn.filed_tick.store(tick, Relaxed);
        }
        let sooner = tick < self.wake_tick;
        if sooner {
            self.wake_tick = tick;
        }
        sooner
    }

    /// The first tick after `last` whose bucket holds an entry.
    fn first_due_after(&self, last: u64) -> u64 {
        let len = self.wheel.len() as u64;
        (last + 1..last + len)
            .find(|t| !self.wheel[(t % len) as usize].is_empty())
            .unwrap_or(NOTHING_DUE)
    }
}

pub struct Registry {
    shards: Vec<Mutex<Shard>>,
    /// One per shard: wakes its ticker when a connection is filed before
    /// the tick it sleeps until (and when the registry goes).
    wakers: Vec<Arc<Notify>>,
    timing: Timing,
    /// Pings written straight to the socket, and pings queued to the
    /// connection's task.
    pub pings_direct: Counter,
    pub pings_queued: Counter,
    /// Connections closed because their token expired.
    pub expired: Counter,
    /// How long before a token's expiry the refresh proxy is asked (ms;
    /// 0: no refresh proxy), and where those connections go.
    refresh_ahead_ms: AtomicU64,
    refresh_queue: OnceLock<mpsc::UnboundedSender<Arc<ConnHandle>>>,
}

/// Where a connection sits in the registry; give it back to `remove`.
#[derive(Debug, Clone, Copy)]
pub struct Slot {
    shard: usize,
    key: usize,
}

impl Due {
    /// The same, due no later than `at`.
    fn at_most(self, at: u64) -> Due {
        match self {
            Due::Later(t) => Due::Later(t.min(at)),
            Due::Ping(t) => Due::Ping(t.min(at)),
            Due::Closed(t) => Due::Closed(t.min(at)),
            other => other,
        }
    }
}

/// What a tick found for one connection.
enum Due {
    /// Heard from since: due again at this time.
    Later(u64),
    /// Silent for the ping interval: ping it, due again at this time (to
    /// see the pong, or to close).
    Ping(u64),
    /// No sign of life within the pong timeout: closed; due again at this
    /// time should it still be there.
    Closed(u64),
    /// The token ran out: closed with 4401.
    Expired(u64),
}

impl Registry {
    pub fn new(ping_interval: Duration, pong_timeout: Duration) -> Registry {
        let timing = Timing::new(ping_interval, pong_timeout);
        let now_tick = now_ms() / timing.tick_ms;
        Registry {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        conns: Slab::new(),
                        wheel: (0..timing.buckets()).map(|_| Vec::new()).collect(),
                        next_tick: now_tick,
                        wake_tick: NOTHING_DUE,
                    })
                })
                .collect(),
            wakers: (0..SHARDS).map(|_| Arc::new(Notify::new())).collect(),
            timing,
            pings_direct: Counter::default(),
            pings_queued: Counter::default(),
            expired: Counter::default(),
            refresh_ahead_ms: AtomicU64::new(0),
            refresh_queue: OnceLock::new(),
        }
    }

    /// Connections whose token expires within `ahead_ms` go to the
    /// returned queue (once per expiry) for the refresh proxy; 0 stops it.
    /// The queue is made by the first call.
    pub fn refresh_ahead(&self, ahead_ms: u64) -> Option<mpsc::UnboundedReceiver<Arc<ConnHandle>>> {
        self.refresh_ahead_ms.store(ahead_ms, Relaxed);
        let mut receiver = None;
        self.refresh_queue.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            receiver = Some(rx);
            tx
        });
        receiver
    }

    pub fn insert(&self, conn: Arc<ConnHandle>) -> Slot {
        let shard_index = (conn.id as usize) % SHARDS;
        let mut due = conn.last_seen.load(Relaxed) + self.timing.interval_ms;
        let (expiry, _) = conn.expiry();
        if expiry != 0 {
            due = due.min(expiry.saturating_sub(self.refresh_ahead_ms.load(Relaxed)));
        }
        let id = conn.id as u32;
        let mut shard = self.shards[shard_index].lock();
        let key = shard.conns.insert(conn);
        // The ticker may have slept through ticks with nothing due, so
        // `next_tick` can lag the clock.
        let current = shard.next_tick.max(now_ms() / self.timing.tick_ms);
        let sooner = shard.schedule(
            &self.timing,
            current.saturating_sub(1),
            due,
            (key as u32, id),
        );
        drop(shard);
        if sooner {
            self.wakers[shard_index].notify_one();
        }
        Slot {
            shard: shard_index,
            key,
        }
    }

    /// `conn`'s token now expires before the tick it is filed under (a
    /// refresh with a shorter token): filed again at its expiry. The
    /// entry left behind is dropped when its tick comes
    /// ([`ConnHandle::filed_tick`] then names a later one).
    pub fn expiry_moved(&self, conn: &Arc<ConnHandle>) {
        let (expiry, _) = conn.expiry();
        if expiry == 0 {
            return;
        }
        let due_tick = expiry.div_ceil(self.timing.tick_ms);
        if due_tick >= conn.filed_tick.load(Relaxed) {
            return;
        }
        let shard_index = (conn.id as usize) % SHARDS;
        let mut shard = self.shards[shard_index].lock();
        let Some(key) = shard
            .conns
            .iter()
            .find(|(_, c)| Arc::ptr_eq(c, conn))
            .map(|(k, _)| k)
        else {
            return;
        };
        let current = shard.next_tick.max(now_ms() / self.timing.tick_ms);
        let sooner = shard.schedule(
            &self.timing,
            current.saturating_sub(1),
            expiry,
            (key as u32, conn.id as u32),
        );
        drop(shard);
        if sooner {
            self.wakers[shard_index].notify_one();
        }
    }

    pub fn remove(&self, slot: Slot) {
        let mut shard = self.shards[slot.shard].lock();
        if shard.conns.contains(slot.key) {
            shard.conns.remove(slot.key);
        }
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().conns.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every registered connection (a snapshot).
    pub fn all(&self) -> Vec<Arc<ConnHandle>> {
        let mut out = Vec::with_capacity(self.len());
        for shard in &self.shards {
            out.extend(shard.lock().conns.iter().map(|(_, c)| c.clone()));
        }
        out
    }

    /// Starts the shard tickers. Each sleeps until the next tick whose
    /// bucket holds an entry, not from tick to tick: a node whose
    /// connections are all heard from, or all pinged together, wakes for
    /// those ticks only (every wake-up of an idle process costs tens of
    /// microseconds on a virtual machine, more than a tick's work).
    pub fn spawn_tickers(self: &Arc<Self>) {
        let tick_ms = self.timing.tick_ms;
        for shard in 0..SHARDS {
            let weak = Arc::downgrade(self);
            let waker = self.wakers[shard].clone();
            // The shards' ticks are spread over one tick.
            let offset_ms = tick_ms * shard as u64 / SHARDS as u64;
            tokio::spawn(async move {
                loop {
                    let wake_tick = match weak.upgrade() {
                        Some(registry) => registry.shards[shard].lock().wake_tick,
                        None => return,
                    };
                    if wake_tick == NOTHING_DUE {
                        waker.notified().await;
                        continue;
                    }
                    let at = wake_tick.saturating_mul(tick_ms).saturating_add(offset_ms);
                    let now = now_ms();
                    if at > now {
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(at - now)) => {}
                            _ = waker.notified() => continue,
                        }
                    }
                    let Some(registry) = weak.upgrade() else {
                        return;
                    };
                    registry.check_shard(shard, now_ms());
                }
            });
        }
    }

    /// What is due for `conn` at `now`: its token's expiry first, then
    /// its heartbeat; due again no later than its expiry (or the time to
    /// ask the refresh proxy).
    fn due(&self, conn: &ConnHandle, now: u64) -> Due {
        let (expiry, asked) = conn.expiry();
        let beat = self.heartbeat_due(conn, now);
        if expiry == 0 {
            return beat;
        }
        if now >= expiry {
            return Due::Expired(now + self.timing.timeout_ms);
        }
        let ahead = self.refresh_ahead_ms.load(Relaxed);
        if ahead > 0 && !asked {
            beat.at_most(expiry.saturating_sub(ahead).max(now + 1))
        } else {
            beat.at_most(expiry)
        }
    }

    /// Whether the refresh proxy is to be asked for `conn` now (marked as
    /// asked when so: once per expiry).
    fn refresh_now(&self, conn: &ConnHandle, now: u64) -> bool {
        let ahead = self.refresh_ahead_ms.load(Relaxed);
        let (expiry, asked) = conn.expiry();
        ahead > 0
            && expiry != 0
            && !asked
            && now < expiry
            && now >= expiry.saturating_sub(ahead)
            && conn.mark_refresh_asked(expiry)
    }

    fn heartbeat_due(&self, conn: &ConnHandle, now: u64) -> Due {
        let t = &self.timing;
        let seen = conn.last_seen.load(Relaxed);
        let pinged = conn.ping_sent.load(Relaxed);
        if pinged > seen {
            if now.saturating_sub(pinged) >= t.timeout_ms {
                Due::Closed(now + t.timeout_ms)
            } else {
                // Waiting for the pong: back at the timeout, or within an
                // interval when that is shorter, so a late pong still makes
                // the next ping due one interval after it.
                Due::Later((pinged + t.timeout_ms).min(now + t.interval_ms))
            }
        } else if now.saturating_sub(seen) >= t.interval_ms {
            // Back at the timeout, or sooner when the interval is shorter:
            // a pong then makes the next ping due one interval after it.
            Due::Ping(now + t.timeout_ms.min(t.interval_ms))
        } else {
            Due::Later(seen + t.interval_ms)
        }
    }

    /// Processes the shard's ticks up to `now`: pings and closes what is due.
    fn check_shard(&self, shard: usize, now: u64) {
        let timing = self.timing;
        let mut to_ping = Vec::new();
        let mut to_refresh = Vec::new();
        {
            let mut guard = self.shards[shard].lock();
            let shard = &mut *guard;
            let last = now / timing.tick_ms;
            let len = shard.wheel.len() as u64;
            // After a stall longer than a turn, one turn visits everyone.
            let first = shard.next_tick.max((last + 1).saturating_sub(len));
            for tick in first..=last {
                let bucket = (tick % len) as usize;
                let mut entries = std::mem::take(&mut shard.wheel[bucket]);
                for &(key, id) in &entries {
                    let Some(conn) = shard.conns.get(key as usize).filter(|c| c.id as u32 == id)
                    else {
                        continue; // gone
                    };
                    if conn.filed_tick.load(Relaxed) > tick {
                        continue; // filed again since, for a later tick
                    }
                    if self.refresh_now(conn, now) {
                        to_refresh.push(conn.clone());
                    }
                    let next = match self.due(conn, now) {
                        Due::Later(at) => at,
                        Due::Ping(at) => {
                            let seen = conn.last_seen.load(Relaxed);
                            conn.ping_sent.store(now.max(seen + 1), Relaxed);
                            to_ping.push(conn.clone());
                            at
                        }
                        Due::Closed(at) => {
                            conn.outbox.close(close::TIMEOUT, "heartbeat lost");
                            at
                        }
                        Due::Expired(at) => {
                            self.expired.inc();
                            conn.outbox.close(close::UNAUTHORIZED, close::TOKEN_EXPIRED);
                            at
                        }
                    };
                    let _ = shard.schedule(&timing, tick, next, (key, id));
                }
                // Keep the bucket's memory for the next turn, unless a
                // burst made it much larger than usual.
                let held = entries.len();
                entries.clear();
                if entries.capacity() > 2 * held + 64 {
                    entries.shrink_to(held);
                }
                shard.wheel[bucket] = entries;
            }
            shard.next_tick = shard.next_tick.max(last + 1);
            shard.wake_tick = shard.first_due_after(shard.next_tick - 1);
        }
        if let Some(queue) = self.refresh_queue.get() {
            for conn in to_refresh {
                let _ = queue.send(conn);
            }
        }
        // Outside the lock: these are system calls.
        for conn in to_ping {
            match conn.wire.try_ping() {
                Direct::Sent => self.pings_direct.inc(),
                Direct::Half | Direct::NotSent => {
                    conn.outbox.ping();
                    self.pings_queued.inc();
                }
            }
        }
    }
}

impl Drop for Registry {
    /// Lets the tickers see that the registry is gone.
    fn drop(&mut self) {
        for waker in &self.wakers {
            waker.notify_one();
        }
    }
}

#[cfg(test)]
mod tests;

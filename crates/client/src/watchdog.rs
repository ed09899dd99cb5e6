//! The heartbeat watchdog: is anything still arriving on this connection?
//!
//! A TCP connection can die without either end being told (a node frozen or
//! cut off by the network). The server pings a silent client every
//! `ping_interval_ms` (announced in `welcome`), so a healthy connection never
//! goes quiet for long. The watchdog counts silence from the last frame of any
//! kind (data, ping, pong): after one interval it asks for a probe (the client
//! sends a protocol `ping`, which makes the server answer even when it has
//! nothing else to say), and after two intervals plus some slack it declares
//! the connection dead so the client reconnects.
//!
//! It is a plain state machine over `Instant`s; the session loop supplies the
//! clock and one periodic tick, so no timer is armed per frame.

use std::time::{Duration, Instant};

/// What the session should do after a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Alive,
    /// Quiet for a full interval: send a `ping`.
    Probe,
    /// Quiet for too long: the connection is dead.
    Dead,
}

#[derive(Debug)]
pub(crate) struct Watchdog {
    probe_after: Duration,
    dead_after: Duration,
    last_seen: Instant,
    probed: bool,
}

/// Used when a server announces an interval of 0.
const FALLBACK_INTERVAL: Duration = Duration::from_secs(25);

impl Watchdog {
    pub(crate) fn new(ping_interval: Duration, slack: Duration, now: Instant) -> Self {
        let interval = if ping_interval.is_zero() {
            FALLBACK_INTERVAL
        } else {
            ping_interval
        };
        Watchdog {
            probe_after: interval,
            dead_after: interval.saturating_mul(2).saturating_add(slack),
            last_seen: now,
            probed: false,
        }
    }

    /// Something arrived.
    pub(crate) fn seen(&mut self, now: Instant) {
        self.last_seen = now;
        self.probed = false;
    }

    pub(crate) fn check(&mut self, now: Instant) -> Verdict {
        let silent = now.saturating_duration_since(self.last_seen);
        if silent >= self.dead_after {
            Verdict::Dead
        } else if silent >= self.probe_after && !self.probed {
            self.probed = true;
            Verdict::Probe
        } else {
            Verdict::Alive
        }
    }

    /// How often the session should call [`Watchdog::check`]: fine enough to
    /// notice death within a small fraction of the interval.
    pub(crate) fn check_every(&self) -> Duration {
        (self.probe_after / 4).clamp(Duration::from_millis(20), Duration::from_secs(1))
    }

    /// How long a write may block before the connection counts as dead.
    pub(crate) fn dead_after(&self) -> Duration {
        self.dead_after
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn silence_first_asks_for_one_probe_then_declares_death() {
        let t0 = Instant::now();
        let mut w = Watchdog::new(100 * MS, 30 * MS, t0);
        assert_eq!(w.check(t0 + 99 * MS), Verdict::Alive);
        assert_eq!(w.check(t0 + 100 * MS), Verdict::Probe);
        assert_eq!(
            w.check(t0 + 150 * MS),
            Verdict::Alive,
            "one probe per silence"
        );
        assert_eq!(w.check(t0 + 229 * MS), Verdict::Alive);
        assert_eq!(w.check(t0 + 230 * MS), Verdict::Dead);
    }

    #[test]
    fn any_frame_resets_the_silence() {
        let t0 = Instant::now();
        let mut w = Watchdog::new(100 * MS, 30 * MS, t0);
        assert_eq!(w.check(t0 + 120 * MS), Verdict::Probe);
        w.seen(t0 + 200 * MS);
        assert_eq!(w.check(t0 + 260 * MS), Verdict::Alive);
        assert_eq!(w.check(t0 + 300 * MS), Verdict::Probe);
        assert_eq!(w.check(t0 + 429 * MS), Verdict::Alive);
        assert_eq!(w.check(t0 + 430 * MS), Verdict::Dead);
    }

    #[test]
    fn a_zero_interval_falls_back_instead_of_killing_every_connection() {
        let t0 = Instant::now();
        let mut w = Watchdog::new(Duration::ZERO, Duration::ZERO, t0);
        assert_eq!(w.check(t0 + Duration::from_secs(1)), Verdict::Alive);
    }
}

//! How long to wait before the next connection attempt.
//!
//! Exponential backoff with *full* jitter: the wait before attempt `n`
//! (counting from 0) is drawn uniformly from `0..=min(cap, base * 2^n)`.
//! Full jitter, rather than a fixed delay plus a little noise, is what spreads
//! a crowd of clients that lost the same node at the same instant across the
//! whole window, so the node they fail over to is not hit by all of them at
//! once. The policy is a plain value: the random source is a parameter, which
//! is what lets the tests pin the bounds down.

use std::time::Duration;

use rand::Rng;

/// Reconnection policy: exponential growth, a cap, and an optional limit on
/// consecutive failed attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Upper bound of the first wait.
    pub base: Duration,
    /// No wait is ever longer than this.
    pub cap: Duration,
    /// Give up after this many consecutive failed attempts; `None` retries for
    /// ever. A connection that reached `welcome` resets the count.
    pub max_attempts: Option<u32>,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(250),
            cap: Duration::from_secs(15),
            max_attempts: None,
        }
    }
}

impl Backoff {
    /// The largest wait before attempt `attempt` (0-based):
    /// `min(cap, base * 2^attempt)`, without overflowing for any attempt.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt).unwrap_or(u32::MAX);
        self.base
            .checked_mul(factor)
            .unwrap_or(Duration::MAX)
            .min(self.cap)
    }

    /// A random wait before attempt `attempt`, drawn from `0..=ceiling(attempt)`.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, &mut rand::thread_rng())
    }

    /// [`Backoff::delay`] with a caller-supplied random source.
    pub fn delay_with<R: Rng + ?Sized>(&self, attempt: u32, rng: &mut R) -> Duration {
        let ceiling = u64::try_from(self.ceiling(attempt).as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.gen_range(0..=ceiling))
    }

    /// True once `failures` consecutive failed attempts exhaust the policy.
    pub fn exhausted(&self, failures: u32) -> bool {
        self.max_attempts.is_some_and(|max| failures >= max.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    fn policy() -> Backoff {
        Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(2),
            max_attempts: Some(5),
        }
    }

    #[test]
    fn the_ceiling_doubles_from_base_until_the_cap() {
        let b = policy();
        let ceilings: Vec<u64> = (0..8).map(|n| b.ceiling(n).as_millis() as u64).collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1600, 2000, 2000, 2000]);
    }

    #[test]
    fn huge_attempt_numbers_stay_at_the_cap_without_overflow() {
        let b = policy();
        for n in [31, 32, 63, 64, 1000, u32::MAX] {
            assert_eq!(b.ceiling(n), b.cap, "attempt {n}");
        }
        let unbounded = Backoff {
            cap: Duration::MAX,
            ..policy()
        };
        assert!(unbounded.ceiling(u32::MAX) > Duration::from_secs(1_000_000));
        let _ = unbounded.delay(u32::MAX);
    }

    #[test]
    fn every_delay_lies_between_zero_and_the_ceiling() {
        let b = policy();
        let mut rng = StdRng::seed_from_u64(7);
        for attempt in 0..10 {
            for _ in 0..500 {
                let d = b.delay_with(attempt, &mut rng);
                assert!(
                    d <= b.ceiling(attempt),
                    "{d:?} over {:?}",
                    b.ceiling(attempt)
                );
            }
        }
    }

    #[test]
    fn the_jitter_is_full_it_covers_the_whole_window() {
        let b = policy();
        let mut rng = StdRng::seed_from_u64(42);
        let ceiling = b.ceiling(3).as_secs_f64();
        let samples: Vec<f64> = (0..4000)
            .map(|_| b.delay_with(3, &mut rng).as_secs_f64() / ceiling)
            .collect();
        let min = samples.iter().cloned().fold(f64::MAX, f64::min);
        let max = samples.iter().cloned().fold(0.0, f64::max);
        let mean = samples.iter().sum::<f64>() / samples.len() as f64;
        assert!(min < 0.02, "lowest sample {min} should reach near zero");
        assert!(
            max > 0.98,
            "highest sample {max} should reach near the ceiling"
        );
        assert!(
            (0.45..0.55).contains(&mean),
            "mean {mean} should sit mid-window"
        );
        // Each tenth of the window gets its share.
        let mut buckets = [0usize; 10];
        for s in &samples {
            buckets[((s * 10.0) as usize).min(9)] += 1;
        }
        assert!(buckets.iter().all(|&n| n > 300), "{buckets:?}");
    }

    #[test]
    fn a_zero_base_never_waits() {
        let b = Backoff {
            base: Duration::ZERO,
            ..policy()
        };
        assert_eq!(b.delay(4), Duration::ZERO);
    }

    #[test]
    fn max_attempts_bounds_consecutive_failures() {
        let b = policy();
        assert!(!b.exhausted(4));
        assert!(b.exhausted(5));
        assert!(!Backoff::default().exhausted(u32::MAX));
        let zero = Backoff {
            max_attempts: Some(0),
            ..policy()
        };
        assert!(zero.exhausted(1), "zero allowed attempts still tries once");
    }
}

//! Batching of queries: callers asking while others are in flight wait in
//! [`Batches`] and go out together, a few requests for many callers.

use std::collections::VecDeque;

/// Lookups (and takes, and parks) asked while others are in flight go out together, up
/// to this many names per request, in at most [`BATCH_RUNNERS`] requests of
/// each kind at once: a storm of resumes costs a few requests, not one each.
const BATCH_NAMES: usize = 1000;
const BATCH_RUNNERS: usize = 4;

/// Queries waiting to share a request, and how many tasks send them.
pub(crate) struct Batches<W> {
    waiting: VecDeque<W>,
    runners: usize,
}

impl<W> Default for Batches<W> {
    fn default() -> Self {
        Batches {
            waiting: VecDeque::new(),
            runners: 0,
        }
    }
}

/// A caller waiting in [`Batches`].
pub(crate) trait Waiter {
    /// How many names it adds to a request.
    fn names(&self) -> usize;
    /// Its caller stopped waiting (timed out).
    fn abandoned(&self) -> bool;
}

impl<W: Waiter> Batches<W> {
    /// Queues a waiter; true when a new sending task must be started.
    pub(crate) fn push(&mut self, waiter: W) -> bool {
        self.waiting.push_back(waiter);
        let start = self.runners < BATCH_RUNNERS;
        self.runners += usize::from(start);
        start
    }

    /// The next request's waiters (at most [`BATCH_NAMES`] names, or one
    /// waiter that has more). Empty when none is left: the calling task
    /// then stops, and is counted out here.
    pub(crate) fn next_batch(&mut self) -> Vec<W> {
        // Whoever timed out waiting is no longer asking.
        self.waiting.retain(|waiter| !waiter.abandoned());
        let mut names = 0;
        let mut take = 0;
        for waiter in &self.waiting {
            names += waiter.names();
            if take > 0 && names > BATCH_NAMES {
                break;
            }
            take += 1;
        }
        if take == 0 {
            self.runners -= 1;
        }
        self.waiting.drain(..take).collect()
    }
}

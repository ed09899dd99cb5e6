//! Commands sent and still waiting for their reply, matched by `id`.
//!
//! Every command the client sends carries a fresh `id` (never reused, not even
//! across connections, so a late reply cannot be mistaken for another). The
//! table remembers who is waiting (a caller's future, or the client itself for
//! the joins it sends after a reconnect) and what was asked, because a `joined`
//! or `left` also changes the client's own view of its rooms. When the
//! connection drops, everything still in the table fails with `Disconnected`:
//! nothing is re-sent behind the caller's back.

use std::collections::HashMap;

use roomcast_protocol::{ServerFrame, Since};
use tokio::sync::oneshot;

use crate::Error;

/// Where a reply goes.
pub(crate) enum Waiter {
    /// A caller awaiting the reply frame (or the error).
    Caller(oneshot::Sender<Result<ServerFrame, Error>>),
    /// A join the client sent itself to restore a room after a reconnect.
    Rejoin,
}

/// What was asked, as far as the client's own bookkeeping cares.
#[derive(Debug, Clone)]
pub(crate) enum Asked {
    Join {
        room: String,
        presence: bool,
        since: Option<Since>,
    },
    Leave {
        room: String,
    },
    Other,
}

pub(crate) struct Pending {
    pub(crate) waiter: Waiter,
    pub(crate) asked: Asked,
}

impl Pending {
    /// Hands the outcome to whoever waits for it.
    pub(crate) fn resolve(self, outcome: Result<ServerFrame, Error>) {
        if let Waiter::Caller(tx) = self.waiter {
            // The caller may have timed out and gone: nothing to do then.
            let _ = tx.send(outcome);
        }
    }
}

#[derive(Default)]
pub(crate) struct PendingTable {
    next_id: u64,
    waiting: HashMap<u64, Pending>,
}

impl PendingTable {
    /// A fresh id, never handed out before by this client.
    pub(crate) fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub(crate) fn insert(&mut self, id: u64, pending: Pending) {
        self.waiting.insert(id, pending);
    }

    pub(crate) fn take(&mut self, id: u64) -> Option<Pending> {
        self.waiting.remove(&id)
    }

    /// Removes everything still waiting; the caller fails each entry.
    pub(crate) fn drain(&mut self) -> Vec<Pending> {
        self.waiting.drain().map(|(_, p)| p).collect()
    }

    /// Forgets commands whose caller stopped waiting (timed out), so a server
    /// that never answers cannot grow the table.
    pub(crate) fn sweep_abandoned(&mut self) {
        self.waiting.retain(|_, p| match &p.waiter {
            Waiter::Caller(tx) => !tx.is_closed(),
            Waiter::Rejoin => true,
        });
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_never_reused() {
        let mut t = PendingTable::default();
        let a = t.next_id();
        let b = t.next_id();
        assert!(a >= 1 && b > a);
    }

    #[test]
    fn abandoned_callers_are_swept_but_internal_rejoins_are_kept() {
        let mut t = PendingTable::default();
        let (tx, rx) = oneshot::channel();
        t.insert(
            1,
            Pending {
                waiter: Waiter::Caller(tx),
                asked: Asked::Other,
            },
        );
        t.insert(
            2,
            Pending {
                waiter: Waiter::Rejoin,
                asked: Asked::Other,
            },
        );
        drop(rx);
        t.sweep_abandoned();
        assert_eq!(t.len(), 1);
        assert!(t.take(2).is_some());
    }
}

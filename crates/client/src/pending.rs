//! Commands sent and still waiting for their reply, matched by `id`.
//!
//! Every command the client sends carries a fresh `id` (never reused, not even
//! across connections, so a late reply cannot be mistaken for another). The
//! table remembers who is waiting (a caller's future, or the client itself for
//! the joins it sends after a reconnect) and what was asked, because a `joined`
//! or `left` also changes the client's own view of its rooms. When the
//! connection drops, everything still in the table fails with `Disconnected`,
//! except publishes: each carries an idempotency key, so the driver keeps
//! them (a [`PublishJob`]) and sends them again, with the same key, on the
//! next connection.

use std::collections::HashMap;

use roomcast_protocol::{Data, ServerFrame, Since};
use tokio::sync::oneshot;

use crate::Error;

/// A publish until it is settled: what to send (again), under which key,
/// how often it was sent, and who waits for it.
pub(crate) struct PublishJob {
    /// Call order, so resends keep the order of the calls.
    pub(crate) seq: u64,
    pub(crate) room: String,
    pub(crate) data: Data,
    pub(crate) key: String,
    /// Sends so far.
    pub(crate) attempts: u32,
    pub(crate) reply: oneshot::Sender<Result<Published, Error>>,
}

impl PublishJob {
    pub(crate) fn finish(self, outcome: Result<Published, Error>) {
        // The caller may have timed out and gone.
        let _ = self.reply.send(outcome);
    }

    /// Whether the caller still waits.
    pub(crate) fn wanted(&self) -> bool {
        !self.reply.is_closed()
    }
}

/// Where a reply goes.
pub(crate) enum Waiter {
    /// A caller awaiting the reply frame (or the error).
    Caller(oneshot::Sender<Result<ServerFrame, Error>>),
    /// A join the client sent itself to restore a room after a reconnect.
    Rejoin,
    /// A leave the client sent itself: the node joined the connection again
    /// to a server-side subscription the application had left.
    Releave,
    /// A publish, kept across reconnects until settled.
    Publish(PublishJob),
    /// A token refresh (the driver's own).
    Refresh,
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
        match self.waiter {
            // The caller may have timed out and gone: nothing to do then.
            Waiter::Caller(tx) => {
                let _ = tx.send(outcome);
            }
            Waiter::Publish(job) => {
                let outcome = outcome.and_then(|frame| published(&job.key, frame));
                job.finish(outcome);
            }
            Waiter::Rejoin | Waiter::Releave | Waiter::Refresh => {}
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

    /// Removes everything still waiting, in the order it was sent; the
    /// caller fails (or keeps) each entry.
    pub(crate) fn drain(&mut self) -> Vec<Pending> {
        let mut all: Vec<(u64, Pending)> = self.waiting.drain().collect();
        all.sort_by_key(|(id, _)| *id);
        all.into_iter().map(|(_, p)| p).collect()
    }

    /// Forgets commands whose caller stopped waiting (timed out), so a server
    /// that never answers cannot grow the table.
    pub(crate) fn sweep_abandoned(&mut self) {
        self.waiting.retain(|_, p| match &p.waiter {
            Waiter::Caller(tx) => !tx.is_closed(),
            Waiter::Publish(job) => job.wanted(),
            Waiter::Rejoin | Waiter::Releave | Waiter::Refresh => true,
        });
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.waiting.len()
    }
}

/// A publish's answer: the offset, and whether the key was seen before.
pub(crate) fn published(key: &str, frame: ServerFrame) -> Result<Published, Error> {
    match frame {
        ServerFrame::Ack {
            offset: Some(offset),
            duplicate,
            ..
        } => Ok(Published {
            offset,
            duplicate,
            key: key.to_string(),
        }),
        ServerFrame::Error { code, message, .. } => Err(Error::Server { code, message }),
        other => Err(Error::UnexpectedReply(other.kind().to_string())),
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

/// The node's answer to a publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The message's offset in the room.
    pub offset: u64,
    /// True when the node had stored a publish with this key already (this
    /// was a retry): nothing was stored again, `offset` is the first one's.
    pub duplicate: bool,
    /// The idempotency key the publish was sent with.
    pub key: String,
}

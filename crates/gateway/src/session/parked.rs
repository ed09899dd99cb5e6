//! Parked sessions: in this node (single-node mode), or in the presence
//! service's store (Redis), where any node of the cluster finds them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use roomcast_presence_client::client::{Parked, PresenceError};

use crate::auth::Identity;

/// A session waiting to be resumed.
#[derive(Clone)]
struct ParkedSession {
    identity: Identity,
    expires: Instant,
}

/// Parked sessions: in this node (single-node mode), or in the presence
/// service's store (Redis), where any node of the cluster finds them.
#[derive(Default)]
pub struct ParkedSessions {
    parked: Mutex<HashMap<Arc<str>, ParkedSession>>,
    remote: Option<roomcast_presence_client::client::PresenceClient>,
    /// The session TTL: how long the mark of a session the API ended
    /// stays in the remote store, and a claim on a session lasts.
    ttl: Duration,
}

/// What a resume finds in the store.
#[derive(Debug, Default)]
pub enum Taken {
    /// A parked session, now taken.
    Parked(Identity),
    /// The API ended the session: it must not resume by any other way
    /// either (a cluster's presence service may list it a while longer).
    Ended,
    #[default]
    Nothing,
}

/// What [`ParkedSessions::take_or_claim`] found.
#[derive(Debug, Default)]
pub struct Resumable {
    pub taken: Taken,
    /// The nodes listing the session under its user (it was claimed for
    /// this node if any); `None`: not asked (an older service).
    pub listed: Option<Vec<String>>,
    /// Another node whose claim this one replaced.
    pub displaced: Option<String>,
}

/// The record left in a cluster's store for a session the API ended. The
/// presence client is told to keep it in place when a take reads it
/// ([`roomcast_presence_client::client::ClientOptions::keep`]), so that every
/// resume of the session is refused until it expires.
pub fn ended_record() -> serde_json::Value {
    serde_json::json!({ "ended": true })
}

impl ParkedSessions {
    /// A store kept by the presence service; an ended session's mark stays
    /// `ttl`.
    pub fn remote(client: roomcast_presence_client::client::PresenceClient, ttl: Duration) -> Self {
        ParkedSessions {
            parked: Mutex::default(),
            remote: Some(client),
            ttl,
        }
    }

    pub async fn park(&self, session: Arc<str>, identity: Identity, ttl: Duration) {
        if let Some(remote) = &self.remote {
            let record = serde_json::to_value(&identity).unwrap_or_default();
            match remote
                .park(&session, record, ttl, Some(&identity.user))
                .await
            {
                Ok(Parked::Stored) => {}
                Ok(Parked::Superseded) => {
                    tracing::debug!(%session, "session not parked: it resumed on another node");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "session not parked; its resume will start fresh");
                }
            }
            return;
        }
        self.parked.lock().insert(
            session,
            ParkedSession {
                identity,
                expires: Instant::now() + ttl,
            },
        );
    }

    /// Takes a parked session out of the store, if it has not expired.
    pub async fn take(&self, session: &str) -> Taken {
        if let Some(remote) = &self.remote {
            return Self::taken(remote.take(session).await);
        }
        self.take_local(session)
    }

    /// Takes a parked session, as [`Self::take`] does, for a resume on the
    /// token's word (the presence service lists the session on another
    /// node): in a cluster the session is claimed for this node first, so
    /// its old node's park of it, should that come later, is refused and no
    /// copy is left to resume a second time. A park that came first is
    /// taken here. Also answered: another node that had claimed the
    /// session before (it resumed the session on the token's word too,
    /// so it may hold it live still).
    pub async fn claim(&self, session: &str) -> (Taken, Option<String>) {
        if let Some(remote) = &self.remote {
            return match remote.claim(session, self.ttl).await {
                Ok(claimed) => (Self::taken(Ok(claimed.record)), claimed.displaced),
                Err(e) => (Self::taken(Err(e)), None),
            };
        }
        (self.take_local(session), None)
    }

    /// A resume's first question to a cluster's store, in one request:
    /// the parked session, taken as [`Self::take`] does, and, if the
    /// presence service lists the session under `user`, a claim on it for
    /// this node as [`Self::claim`] makes. `None` in place of the listing
    /// when the service is older than that question (the answer is then a
    /// plain take's) or there is no service.
    pub async fn take_or_claim(&self, session: &str, user: &str) -> Resumable {
        let Some(remote) = &self.remote else {
            return Resumable {
                taken: self.take_local(session),
                ..Resumable::default()
            };
        };
        match remote.take_or_claim(session, user, self.ttl).await {
            Ok(claimed) => Resumable {
                taken: Self::taken(Ok(claimed.record)),
                listed: claimed.listed,
                displaced: claimed.displaced,
            },
            Err(e) => Resumable {
                taken: Self::taken(Err(e)),
                ..Resumable::default()
            },
        }
    }

    fn taken(answer: Result<Option<serde_json::Value>, PresenceError>) -> Taken {
        match answer {
            Ok(Some(record)) if record == ended_record() => Taken::Ended,
            Ok(Some(record)) => serde_json::from_value(record)
                .map(Taken::Parked)
                .unwrap_or(Taken::Nothing),
            _ => Taken::Nothing,
        }
    }

    fn take_local(&self, session: &str) -> Taken {
        match self.parked.lock().remove(session) {
            Some(parked) if parked.expires > Instant::now() => Taken::Parked(parked.identity),
            _ => Taken::Nothing,
        }
    }

    /// The API ended a session: its parked copy, if any, goes, and it can
    /// no longer be resumed. In a cluster the copy is replaced by a mark
    /// of the end, which a resume takes as a refusal: the presence service
    /// may list the session for a while yet (until its node's ops or its
    /// lease's end reach it), and a session it lists would otherwise
    /// resume on the token's word.
    pub async fn discard(&self, session: &str) {
        if let Some(remote) = &self.remote {
            if let Err(e) = remote.mark(session, ended_record(), self.ttl).await {
                tracing::warn!(session, error = %e, "ended session not marked in the store");
            }
            return;
        }
        self.parked.lock().remove(session);
    }

    /// The API ended a user: the sessions the user left parked can no
    /// longer be resumed (those still connected are closed and discarded
    /// by their nodes). In a cluster the presence service lists parked
    /// sessions by user and replaces each one's copy with the mark of
    /// [`Self::discard`]; here the copies go. Returns how many there were.
    pub async fn end_user(&self, user: &str) -> u64 {
        if let Some(remote) = &self.remote {
            return match remote.end_user(user, ended_record(), self.ttl).await {
                Ok(ended) => ended,
                Err(e) => {
                    tracing::warn!(user, error = %e, "parked sessions of an ended user not marked");
                    0
                }
            };
        }
        let mut parked = self.parked.lock();
        let before = parked.len();
        parked.retain(|_, p| &*p.identity.user != user);
        (before - parked.len()) as u64
    }

    /// The API ended `to`: a session's parked copy, or every session a user
    /// left parked.
    pub async fn end(&self, to: &roomcast_protocol::Target) {
        if let Some(session) = &to.session {
            self.discard(session).await;
        }
        if let Some(user) = &to.user {
            self.end_user(user).await;
        }
    }

    /// True when the presence service keeps the parked sessions.
    /// The nodes the presence service lists as holding `session` for
    /// `user` (cluster); `None` when it cannot tell or there is no service.
    pub async fn listed_on(&self, session: &str, user: &str) -> Option<Vec<String>> {
        let owners = self
            .remote
            .as_ref()?
            .lookup(&[], &[session.to_string()])
            .await
            .ok()?;
        Some(
            owners
                .into_iter()
                .filter(|o| o.session == session && o.user == user)
                .map(|o| o.node)
                .collect(),
        )
    }

    pub fn is_remote(&self) -> bool {
        self.remote.is_some()
    }

    /// Drops expired sessions; returns how many.
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        let mut parked = self.parked.lock();
        let before = parked.len();
        parked.retain(|_, p| p.expires > now);
        before - parked.len()
    }

    pub fn len(&self) -> usize {
        self.parked.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
#[path = "parked_tests.rs"]
mod tests;

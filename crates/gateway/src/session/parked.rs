//! Parked sessions: in this node (single-node mode), or in the presence
//! service's store (Redis), where any node of the cluster finds them.
//!
//! The presence service is asked first: it also answers which nodes list a
//! session, which a resume on the token's word needs. When no replica
//! answers (refused, timed out, 5xx), the node runs the same store itself
//! on its own Redis connection ([`roomcast_service::parked`]: the same
//! scripts on the same keys), so a take stays once-only whoever runs it
//! and a record parked by either side is taken by either. See
//! docs/presence.md, "With presence down".

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use roomcast_presence_client::client::{Parked, PresenceError};
use roomcast_service::parked::{Claim, ParkedRecords};

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
    /// The same store on this node's Redis connection, for when the
    /// presence service does not answer; and this node's id, which its
    /// parks and claims carry.
    direct: Option<(ParkedRecords, Arc<str>)>,
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
    /// The presence service did not answer, and the node took (and
    /// claimed) the session in Redis itself: nothing says which nodes list
    /// it, and a session neither parked nor ended resumes on the token's
    /// word.
    pub direct: bool,
}

/// The presence service did not answer (down, unreachable, overloaded):
/// the node asks Redis itself. A 4xx is an answer, and is not retried.
fn unanswered(e: &PresenceError) -> bool {
    match e {
        PresenceError::Unavailable(_) | PresenceError::Timeout => true,
        PresenceError::Status { status, .. } => *status >= 500,
        PresenceError::Unauthorized | PresenceError::Decode(_) => false,
    }
}

/// The user a park lists its session under, as the presence service has
/// it: one that could not be a path segment of its end call is not listed.
fn listed_user(user: &str) -> Option<&str> {
    Some(user).filter(|u| !u.is_empty() && u.len() <= 1024)
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
            direct: None,
        }
    }

    /// Runs the store on `redis` itself, as `node`, whenever the presence
    /// service does not answer.
    pub fn with_redis(mut self, redis: ParkedRecords, node: Arc<str>) -> Self {
        self.direct = Some((redis, node));
        self
    }

    /// The store on this node's Redis, when `e` says the presence service
    /// did not answer.
    fn fallback(&self, e: &PresenceError) -> Option<(&ParkedRecords, &str)> {
        let (records, node) = self.direct.as_ref()?;
        unanswered(e).then_some((records, &**node))
    }

    pub async fn park(&self, session: Arc<str>, identity: Identity, ttl: Duration) {
        if let Some(remote) = &self.remote {
            let record = serde_json::to_value(&identity).unwrap_or_default();
            let mut parked = remote
                .park(&session, record.clone(), ttl, Some(&identity.user))
                .await;
            if let Some((redis, node)) = parked.as_ref().err().and_then(|e| self.fallback(e)) {
                let user = listed_user(&identity.user);
                parked = match redis.park(&session, &record, ttl, user, Some(node)).await {
                    Ok(true) => Ok(Parked::Stored),
                    Ok(false) => Ok(Parked::Superseded),
                    Err(e) => Err(PresenceError::Unavailable(format!(
                        "presence down, and redis: {e}"
                    ))),
                };
                tracing::debug!(%session, ok = parked.is_ok(), "presence down: parked in redis directly");
            }
            match parked {
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
            let taken = remote.take(session).await;
            if let Some((redis, _)) = taken.as_ref().err().and_then(|e| self.fallback(e)) {
                let ended = ended_record();
                let asked = [(session, false)];
                let took = redis.take_many(&asked, None, Some(&ended), None);
                return match took.await {
                    Ok(mut took) => Self::taken(Ok(took.pop().and_then(|t| t.record))),
                    Err(e) => {
                        tracing::warn!(session, error = %e, "presence down, and redis: not taken");
                        Taken::Nothing
                    }
                };
            }
            return Self::taken(taken);
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
                direct: false,
            },
            Err(e) => match self.fallback(&e) {
                Some((redis, node)) => self.take_directly(redis, node, session).await,
                None => Resumable {
                    taken: Self::taken(Err(e)),
                    ..Resumable::default()
                },
            },
        }
    }

    /// [`Self::take_or_claim`] with no presence service to answer: the same
    /// take script, run on this node's Redis, claims the session for this
    /// node whatever lists it (nothing can tell), then takes its record.
    /// The claim refuses a later park by any other node (its old node's
    /// connection of it ending now), so no copy is left to resume twice; a
    /// park that came first is taken here. The mark of an ended session is
    /// read and left in place. When Redis fails too, nothing is taken and
    /// the answer is not `direct`: the resume starts fresh.
    async fn take_directly(&self, redis: &ParkedRecords, node: &str, session: &str) -> Resumable {
        let claim = Claim {
            node,
            ttl: self.ttl,
        };
        let ended = ended_record();
        match redis
            .take_many(&[(session, true)], Some(claim), Some(&ended), None)
            .await
        {
            Ok(mut took) => {
                let took = took.pop().unwrap_or_default();
                tracing::debug!(
                    session,
                    found = took.record.is_some(),
                    "presence down: session taken in redis directly"
                );
                Resumable {
                    taken: Self::taken(Ok(took.record)),
                    listed: None,
                    displaced: took.displaced,
                    direct: true,
                }
            }
            Err(e) => {
                tracing::warn!(session, error = %e, "presence down, and redis: not taken");
                Resumable::default()
            }
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
            let mut marked = remote.mark(session, ended_record(), self.ttl).await;
            if let Some((redis, _)) = marked.as_ref().err().and_then(|e| self.fallback(e)) {
                // Whatever node holds a claim, as the service's mark does.
                let ended = ended_record();
                let mark = redis.park(session, &ended, self.ttl, None, None);
                marked = mark.await.map(|_| ()).map_err(|e| {
                    PresenceError::Unavailable(format!("presence down, and redis: {e}"))
                });
            }
            if let Err(e) = marked {
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
            let mut ended = remote.end_user(user, ended_record(), self.ttl).await;
            if let Some((redis, _)) = ended.as_ref().err().and_then(|e| self.fallback(e)) {
                ended = redis
                    .end_user(user, &ended_record(), self.ttl)
                    .await
                    .map_err(|e| {
                        PresenceError::Unavailable(format!("presence down, and redis: {e}"))
                    });
            }
            return match ended {
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

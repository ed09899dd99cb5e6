//! Sessions that outlive their connection, for resume.
//!
//! When a connection ends its session is parked for `session.ttl_ms`; a
//! `hello` with `resume` takes it back if the resume token matches. The token
//! is `<user>.<mac>`: the user id (base64url) and an HMAC of the session id
//! and the user id under the node's (or the cluster's shared) resume secret.
//! It cannot be forged, a token of one user's session is worthless for
//! another session or user, and it is checked before the session store is
//! touched, so a forged token cannot even evict a parked session.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use roomcast_presence_client::client::{Parked, PresenceError};
use sha2::Sha256;

use crate::auth::Identity;

type HmacSha256 = Hmac<Sha256>;

/// Signs and checks resume tokens.
pub struct ResumeSigner {
    key: Vec<u8>,
}

impl ResumeSigner {
    /// With an empty secret, a random key for this process.
    pub fn new(secret: &str) -> Self {
        let key = if secret.is_empty() {
            let mut key = vec![0u8; 32];
            rand::Rng::fill(&mut rand::thread_rng(), &mut key[..]);
            key
        } else {
            secret.as_bytes().to_vec()
        };
        ResumeSigner { key }
    }

    fn mac(&self, session: &str, user: &str) -> HmacSha256 {
        // A fixed-length key of any size is accepted by HMAC.
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("hmac accepts any key length");
        mac.update(b"roomcast-resume-v1\0");
        mac.update(session.as_bytes());
        mac.update(b"\0");
        mac.update(user.as_bytes());
        mac
    }

    pub fn sign(&self, session: &str, user: &str) -> String {
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(user),
            URL_SAFE_NO_PAD.encode(self.mac(session, user).finalize().into_bytes())
        )
    }

    /// Checks a token against a session (constant-time MAC comparison);
    /// returns the user it was issued to.
    pub fn verify(&self, token: &str, session: &str) -> Option<String> {
        let (user, mac) = token.split_once('.')?;
        let user = String::from_utf8(URL_SAFE_NO_PAD.decode(user).ok()?).ok()?;
        let mac = URL_SAFE_NO_PAD.decode(mac).ok()?;
        self.mac(session, &user).verify_slice(&mac).ok()?;
        Some(user)
    }
}

/// A session waiting to be resumed.
#[derive(Clone)]
struct ParkedSession {
    identity: Identity,
    expires: Instant,
}

/// Parked sessions: in this node (single-node mode), or in the presence
/// service's store (Redis), where any node of the cluster finds them.
#[derive(Default)]
pub struct SessionStore {
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

/// What [`SessionStore::take_or_claim`] found.
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

impl SessionStore {
    /// A store kept by the presence service; an ended session's mark stays
    /// `ttl`.
    pub fn remote(client: roomcast_presence_client::client::PresenceClient, ttl: Duration) -> Self {
        SessionStore {
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
mod tests {
    use super::*;

    #[test]
    fn a_resume_token_is_bound_to_its_session_and_user() {
        let signer = ResumeSigner::new("secret");
        let token = signer.sign("s1", "alice");
        assert_eq!(signer.verify(&token, "s1").as_deref(), Some("alice"));
        assert_eq!(signer.verify(&token, "s2"), None);
        let (_, mac) = token.split_once('.').unwrap();
        let as_bob = format!("{}.{mac}", URL_SAFE_NO_PAD.encode("bob"));
        assert_eq!(signer.verify(&as_bob, "s1"), None);
        assert_eq!(signer.verify("garbage!", "s1"), None);
        assert_eq!(ResumeSigner::new("other").verify(&token, "s1"), None);
    }

    #[tokio::test]
    async fn parked_sessions_expire() {
        let store = SessionStore::default();
        let short = Duration::from_millis(0);
        store
            .park("s".into(), Identity::anonymous("s"), short)
            .await;
        std::thread::sleep(Duration::from_millis(2));
        assert!(matches!(store.take("s").await, Taken::Nothing));
        let long = Duration::from_secs(60);
        store.park("t".into(), Identity::anonymous("t"), long).await;
        assert!(matches!(store.take("t").await, Taken::Parked(_)));
        assert!(
            matches!(store.take("t").await, Taken::Nothing),
            "a session is resumed once"
        );
    }

    #[tokio::test]
    async fn ending_a_user_drops_that_users_parked_sessions_only() {
        let store = SessionStore::default();
        let ttl = Duration::from_secs(60);
        for (session, user) in [("a1", "alice"), ("a2", "alice"), ("b1", "bob")] {
            store
                .park(session.into(), Identity::anonymous_user(user), ttl)
                .await;
        }
        assert_eq!(store.end_user("alice").await, 2);
        assert!(matches!(store.take("a1").await, Taken::Nothing));
        assert!(matches!(store.take("a2").await, Taken::Nothing));
        assert!(matches!(store.take("b1").await, Taken::Parked(_)));
        assert_eq!(store.end_user("alice").await, 0);
    }
}

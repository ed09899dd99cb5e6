//! Sessions that outlive their connection, for resume.
//!
//! When a connection ends its session is parked for `session.ttl_ms`; a
//! `hello` with `resume` takes it back if the resume token matches. The token
//! is an HMAC of the session id and the user id under the node's (or the
//! cluster's shared) resume secret, so it cannot be forged, and a token of one
//! user's session is worthless for another session or user.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
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
        URL_SAFE_NO_PAD.encode(self.mac(session, user).finalize().into_bytes())
    }

    /// Constant-time check of a token against a session and user.
    pub fn verify(&self, token: &str, session: &str, user: &str) -> bool {
        match URL_SAFE_NO_PAD.decode(token) {
            Ok(raw) => self.mac(session, user).verify_slice(&raw).is_ok(),
            Err(_) => false,
        }
    }
}

/// A session waiting to be resumed.
#[derive(Clone)]
pub struct ParkedSession {
    pub identity: Identity,
    expires: Instant,
}

/// Parked sessions of this node (single-node mode).
#[derive(Default)]
pub struct SessionStore {
    parked: Mutex<HashMap<Arc<str>, ParkedSession>>,
}

impl SessionStore {
    pub fn park(&self, session: Arc<str>, identity: Identity, ttl: Duration) {
        self.parked.lock().insert(
            session,
            ParkedSession {
                identity,
                expires: Instant::now() + ttl,
            },
        );
    }

    /// Takes a parked session out of the store, if it has not expired.
    pub fn take(&self, session: &str) -> Option<ParkedSession> {
        let parked = self.parked.lock().remove(session)?;
        (parked.expires > Instant::now()).then_some(parked)
    }

    /// Takes a parked, unexpired session out of the store if `check` accepts
    /// it; a session that fails the check stays parked.
    pub fn take_if(
        &self,
        session: &str,
        check: impl FnOnce(&ParkedSession) -> bool,
    ) -> Option<ParkedSession> {
        let mut parked = self.parked.lock();
        let p = parked.get(session)?;
        if p.expires <= Instant::now() || !check(p) {
            return None;
        }
        parked.remove(session)
    }

    /// Forgets a session (it can no longer be resumed).
    pub fn forget(&self, session: &str) {
        self.parked.lock().remove(session);
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
        assert!(signer.verify(&token, "s1", "alice"));
        assert!(!signer.verify(&token, "s2", "alice"));
        assert!(!signer.verify(&token, "s1", "bob"));
        assert!(!signer.verify("garbage!", "s1", "alice"));
        assert!(!ResumeSigner::new("other").verify(&token, "s1", "alice"));
    }

    #[test]
    fn parked_sessions_expire() {
        let store = SessionStore::default();
        store.park(
            "s".into(),
            Identity::anonymous("s"),
            Duration::from_millis(0),
        );
        std::thread::sleep(Duration::from_millis(2));
        assert!(store.take("s").is_none());
        store.park(
            "t".into(),
            Identity::anonymous("t"),
            Duration::from_secs(60),
        );
        assert!(store.take("t").is_some());
        assert!(store.take("t").is_none(), "a session is resumed once");
    }
}

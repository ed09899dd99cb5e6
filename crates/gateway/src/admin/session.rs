//! Admin sessions: the cookie's value is `<expiry>.<nonce>.<mac>`, an
//! expiry (Unix seconds), a random nonce and an HMAC-SHA256 of both under
//! `admin.key`. Nothing is stored at login, so a session opened on one
//! node is good on every node with the same key (a cluster behind a load
//! balancer); changing the key ends every session. A logout remembers the
//! nonce, on the node that served it, until the session would have
//! expired anyway (the browser's cookie is cleared in any case).

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Logged-out sessions one node remembers at most (each until it expires).
const MAX_REVOKED: usize = 10_000;

/// Issues and checks admin session tokens.
pub struct Sessions {
    key: Vec<u8>,
    ttl: Duration,
    /// Nonces of logged-out sessions, with their expiry.
    revoked: parking_lot::Mutex<HashMap<String, u64>>,
}

/// A session that checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Unix seconds.
    pub expires_at: u64,
    nonce: String,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Sessions {
    pub fn new(key: &str, ttl: Duration) -> Sessions {
        Sessions {
            key: key.as_bytes().to_vec(),
            ttl,
            revoked: parking_lot::Mutex::default(),
        }
    }

    /// How long a new session lasts.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn mac(&self, expires_at: u64, nonce: &str) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("hmac accepts any key length");
        mac.update(b"roomcast-admin-session-v1\0");
        mac.update(expires_at.to_string().as_bytes());
        mac.update(b"\0");
        mac.update(nonce.as_bytes());
        mac
    }

    /// A new session's token.
    pub fn issue(&self) -> String {
        self.issue_at(now_secs())
    }

    fn issue_at(&self, now: u64) -> String {
        let expires_at = now + self.ttl.as_secs().max(1);
        let mut nonce = [0u8; 16];
        rand::Rng::fill(&mut rand::thread_rng(), &mut nonce[..]);
        let nonce = URL_SAFE_NO_PAD.encode(nonce);
        let mac = URL_SAFE_NO_PAD.encode(self.mac(expires_at, &nonce).finalize().into_bytes());
        format!("{expires_at}.{nonce}.{mac}")
    }

    /// The session of a token that is genuine (constant-time MAC check),
    /// not expired and not logged out.
    pub fn check(&self, token: &str) -> Option<Session> {
        self.check_at(token, now_secs())
    }

    fn check_at(&self, token: &str, now: u64) -> Option<Session> {
        let mut parts = token.split('.');
        let (expires, nonce, mac) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let expires_at: u64 = expires.parse().ok()?;
        let mac = URL_SAFE_NO_PAD.decode(mac).ok()?;
        self.mac(expires_at, nonce).verify_slice(&mac).ok()?;
        if now >= expires_at || self.revoked.lock().contains_key(nonce) {
            return None;
        }
        Some(Session {
            expires_at,
            nonce: nonce.to_string(),
        })
    }

    /// Ends a session on this node.
    pub fn revoke(&self, session: &Session) {
        let now = now_secs();
        let mut revoked = self.revoked.lock();
        revoked.retain(|_, expires_at| *expires_at > now);
        if revoked.len() < MAX_REVOKED {
            revoked.insert(session.nonce.clone(), session.expires_at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_checks_until_it_expires_and_not_after_a_logout() {
        let sessions = Sessions::new("a-long-admin-key-123", Duration::from_secs(60));
        let token = sessions.issue_at(1_000);
        let session = sessions.check_at(&token, 1_000).expect("fresh token");
        assert_eq!(session.expires_at, 1_060);
        assert!(sessions.check_at(&token, 1_059).is_some());
        assert!(sessions.check_at(&token, 1_060).is_none(), "expired");
        let other = sessions.issue_at(1_000);
        assert_ne!(token, other, "every login gets its own token");
        sessions
            .revoked
            .lock()
            .insert(session.nonce.clone(), u64::MAX);
        assert!(sessions.check_at(&token, 1_000).is_none(), "logged out");
        assert!(sessions.check_at(&other, 1_000).is_some(), "only that one");
    }

    #[test]
    fn forged_or_altered_tokens_and_other_keys_are_refused() {
        let sessions = Sessions::new("a-long-admin-key-123", Duration::from_secs(60));
        let token = sessions.issue_at(1_000);
        let (expires, rest) = token.split_once('.').unwrap();
        let later = format!("{}.{rest}", expires.parse::<u64>().unwrap() + 3600);
        assert!(
            sessions.check_at(&later, 1_000).is_none(),
            "extended expiry"
        );
        for bad in ["", "garbage", "1.2.3.4", "99999999999.nonce.", &token[1..]] {
            assert!(sessions.check_at(bad, 1_000).is_none(), "{bad:?}");
        }
        let other = Sessions::new("another-admin-key-456", Duration::from_secs(60));
        assert!(other.check_at(&token, 1_000).is_none(), "another key");
    }
}

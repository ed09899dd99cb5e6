//! Resume tokens: `<user>.<mac>`, the user id (base64url) and an HMAC of the
//! session id and the user id under the node's (or the cluster's shared)
//! resume secret. A token cannot be forged, a token of one user's session
//! is worthless for another session or user, and it is checked before the
//! parked sessions are touched, so a forged token cannot even evict one.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

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
}

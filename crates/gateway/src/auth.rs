//! Who a connection is: JWT verification, anonymous identities, and what an
//! identity may do (join and publish patterns from the token's claims).
//!
//! The algorithm is pinned by configuration: a token whose header names any
//! other algorithm (`none` included) is refused before its signature is
//! looked at, which closes the algorithm-confusion hole.

use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::config::{Config, ConfigError, JwtAlgorithm};
use crate::limits::glob_match;
use roomcast_protocol::Data;

/// Leeway for `exp` and `nbf`, in seconds, for clock skew between issuer and node.
const LEEWAY_SECS: u64 = 5;

/// An authenticated (or anonymous) user and its permissions. Serializable:
/// it is the record a parked session keeps for its resume on any node.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Identity {
    pub user: Arc<str>,
    pub info: Option<Data>,
    /// Anonymous identities may join any room.
    pub anonymous: bool,
    /// Patterns of rooms the user may join (token's `rooms`).
    pub rooms: Vec<String>,
    /// Patterns of rooms the user may publish to without joining (token's `publish`).
    pub publish: Vec<String>,
    /// When the token expires (Unix seconds, its `exp`); `None` without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// Rooms the connection joins at `hello` (the token's `subs`, or the
    /// connect proxy's): server-side subscriptions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subs: Vec<String>,
}

impl Identity {
    pub fn anonymous(session: &str) -> Self {
        Identity {
            user: Arc::from(format!("anon-{session}")),
            info: None,
            anonymous: true,
            rooms: Vec::new(),
            publish: Vec::new(),
            expires_at: None,
            subs: Vec::new(),
        }
    }

    /// The anonymous identity a resume token names (its session's record
    /// was lost with a crashed node; the token proved the user).
    pub fn anonymous_user(user: &str) -> Self {
        Identity {
            user: Arc::from(user),
            info: None,
            anonymous: true,
            rooms: Vec::new(),
            publish: Vec::new(),
            expires_at: None,
            subs: Vec::new(),
        }
    }

    pub fn may_join(&self, room: &str) -> bool {
        self.anonymous || self.rooms.iter().any(|p| glob_match(p, room))
    }

    pub fn may_publish_unjoined(&self, room: &str) -> bool {
        self.publish.iter().any(|p| glob_match(p, room))
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    subs: Vec<String>,
    #[serde(default)]
    rooms: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default)]
    info: Option<Data>,
}

/// Why a token was refused (the text goes into the `error` frame).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("a token is required")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// Verifies tokens against the configured key.
pub struct Authenticator {
    key: Option<(DecodingKey, Validation)>,
    anonymous: bool,
}

impl Authenticator {
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        let key = match config.jwt_algorithm()? {
            None => None,
            Some(alg) => {
                let (algorithm, key) = match alg {
                    JwtAlgorithm::Hs256 => (
                        Algorithm::HS256,
                        DecodingKey::from_secret(config.auth.jwt_secret.expose().as_bytes()),
                    ),
                    JwtAlgorithm::Rs256 => (
                        Algorithm::RS256,
                        DecodingKey::from_rsa_pem(&read_pem(&config.auth.jwt_public_key)?)
                            .map_err(|e| ConfigError(format!("auth.jwt_public_key: {e}")))?,
                    ),
                    JwtAlgorithm::Es256 => (
                        Algorithm::ES256,
                        DecodingKey::from_ec_pem(&read_pem(&config.auth.jwt_public_key)?)
                            .map_err(|e| ConfigError(format!("auth.jwt_public_key: {e}")))?,
                    ),
                };
                let mut validation = Validation::new(algorithm);
                validation.set_required_spec_claims(&["exp", "sub"]);
                validation.validate_nbf = true;
                validation.leeway = LEEWAY_SECS;
                Some((key, validation))
            }
        };
        Ok(Authenticator {
            key,
            anonymous: config.anonymous_allowed(),
        })
    }

    /// The identity for a connection presenting `token` (or none).
    pub fn authenticate(&self, token: Option<&str>, session: &str) -> Result<Identity, AuthError> {
        match (token, &self.key) {
            (None, _) | (Some(""), _) if self.anonymous => Ok(Identity::anonymous(session)),
            (None, _) | (Some(""), _) => Err(AuthError::Missing),
            // No key to check a token against: only anonymous access is possible.
            (Some(_), None) if self.anonymous => Ok(Identity::anonymous(session)),
            (Some(_), None) => Err(AuthError::Invalid("no token key is configured".into())),
            (Some(token), Some((key, validation))) => {
                let data = jsonwebtoken::decode::<Claims>(token, key, validation)
                    .map_err(|e| AuthError::Invalid(e.to_string()))?;
                let claims = data.claims;
                // The leeway is for clock skew on `nbf`; a token past its
                // `exp` by more than the connection's grace would be
                // welcomed only to be closed with 4401 a moment later.
                let grace = crate::conn_handle::EXPIRY_GRACE_MS;
                if claims.exp.saturating_mul(1000).saturating_add(grace)
                    <= crate::conn_handle::unix_ms()
                {
                    return Err(AuthError::Invalid("ExpiredSignature".into()));
                }
                if claims.sub.is_empty() {
                    return Err(AuthError::Invalid("empty `sub`".into()));
                }
                Ok(Identity {
                    user: Arc::from(claims.sub),
                    info: claims.info,
                    anonymous: false,
                    rooms: claims.rooms,
                    publish: claims.publish,
                    expires_at: Some(claims.exp),
                    subs: claims.subs,
                })
            }
        }
    }
}

/// PEM text given inline, or read from the file the value names.
fn read_pem(value: &str) -> Result<Vec<u8>, ConfigError> {
    if value.trim_start().starts_with("-----BEGIN") {
        Ok(value.as_bytes().to_vec())
    } else {
        std::fs::read(value)
            .map_err(|e| ConfigError(format!("auth.jwt_public_key: cannot read {value}: {e}")))
    }
}

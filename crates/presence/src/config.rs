//! The presence service's configuration: one typed struct with a default for
//! every field, loaded like the gateway's with figment from (lowest to
//! highest precedence) the defaults, a TOML file (`--config PATH` or
//! `ROOMCAST_CONFIG`), and `ROOMCAST_…` environment variables with `__`
//! between levels (`ROOMCAST_REDIS__URL`). A bad value stops startup with a
//! message naming the key. `docs/presence.md` documents every key; a test
//! checks that the page and this struct agree.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The `[webhooks]` section: where and how presence changes are told to
/// the application's backend (`docs/hooks.md`).
pub use roomcast_hooks::webhook::WebhookConfig;

/// A secret string: never printed by `Debug`, never logged.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Keys whose values are secrets: an error never shows them.
const SECRET_KEYS: [&str; 3] = ["presence.key", "redis.url", "webhooks.secret"];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Address the HTTP API listens on.
    pub listen: SocketAddr,
    pub redis: RedisConfig,
    pub presence: PresenceConfig,
    pub lease: LeaseConfig,
    pub events: EventsConfig,
    pub webhooks: WebhookConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RedisConfig {
    /// Redis URL, required: `redis://host:port` (one server) or
    /// `redis-cluster://host:port?node=host2:port2` (a cluster).
    pub url: String,
    /// The URL names a Redis Cluster: presence events go out with SPUBLISH.
    pub cluster: bool,
    /// PEM file of the CA that signed the Redis server's certificate (with a `rediss://` URL). Empty: the system roots.
    pub tls_ca_file: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PresenceConfig {
    /// Shared secret gateways send as `Authorization: Bearer`. Empty: no check.
    pub key: Secret,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct LeaseConfig {
    /// Lease of a node whose sync names none, in milliseconds; also how long
    /// after startup unknown nodes are rebuilt silently.
    pub default_ms: u64,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig { default_ms: 15_000 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct EventsConfig {
    /// Presence events kept while Redis cannot take them; the oldest are dropped beyond.
    pub max_queued: usize,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            max_queued: 100_000,
        }
    }
}

/// Logging settings, the same for every roomcast process.
pub use roomcast_service::LogConfig;

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8090)),
            redis: RedisConfig::default(),
            presence: PresenceConfig::default(),
            lease: LeaseConfig::default(),
            events: EventsConfig::default(),
            webhooks: WebhookConfig::default(),
            log: LogConfig::default(),
        }
    }
}

/// A configuration error, naming the key at fault.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct ConfigError(pub String);

impl Config {
    /// Loads defaults, then the TOML file (if any), then `ROOMCAST_*`
    /// variables. Also returns keys given but unknown (likely typos).
    pub fn load(file: Option<&Path>) -> Result<(Config, Vec<String>), ConfigError> {
        let (mut config, unknown): (Config, _) =
            roomcast_service::load(file, &SECRET_KEYS).map_err(ConfigError)?;
        config.read_secret_files()?;
        config.validate()?;
        Ok((config, unknown))
    }

    /// Secrets given as `file:/path` are read from that file, as the
    /// gateway's are (mounted Kubernetes or Docker secrets).
    fn read_secret_files(&mut self) -> Result<(), ConfigError> {
        roomcast_service::read_secret_files(&mut [
            ("presence.key", &mut self.presence.key.0),
            ("redis.url", &mut self.redis.url),
            ("webhooks.secret", &mut self.webhooks.secret),
        ])
        .map_err(ConfigError)
    }

    /// Checks values that have a valid type but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let url = &self.redis.url;
        if url.is_empty() {
            return Err(ConfigError(
                "redis.url is required (ROOMCAST_REDIS__URL=redis://host:port)".into(),
            ));
        }
        let schemes = [
            "redis://",
            "rediss://",
            "redis-cluster://",
            "rediss-cluster://",
        ];
        if !schemes.iter().any(|s| url.starts_with(s)) {
            return Err(ConfigError(format!(
                "redis.url must start with one of {}",
                schemes.join(", ")
            )));
        }
        if self.lease.default_ms == 0 {
            return Err(ConfigError(
                "lease.default_ms must be greater than 0".into(),
            ));
        }
        if self.events.max_queued == 0 {
            return Err(ConfigError(
                "events.max_queued must be greater than 0".into(),
            ));
        }
        self.webhooks.validate("webhooks").map_err(ConfigError)?;
        Ok(())
    }

    /// Whether Redis is a cluster: configured, or implied by the URL.
    pub fn redis_is_cluster(&self) -> bool {
        self.redis.cluster || self.redis.url.contains("-cluster://")
    }

    pub fn default_lease(&self) -> Duration {
        Duration::from_millis(self.lease.default_ms)
    }
}

/// Every key of the configuration, dotted.
pub fn all_keys() -> Vec<String> {
    roomcast_service::all_keys::<Config>()
        .into_iter()
        .map(|(key, _)| key)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_documented_in_presence_md() {
        let doc =
            std::fs::read_to_string(roomcast_testkit::workspace_root().join("docs/presence.md"))
                .expect("docs/presence.md");
        for key in all_keys() {
            let env = format!("ROOMCAST_{}", key.to_uppercase().replace('.', "__"));
            assert!(doc.contains(&format!("`{key}`")), "{key} is not documented");
            assert!(doc.contains(&env), "{env} is not documented");
        }
    }

    #[test]
    fn redis_url_is_required_and_named() {
        let err = Config::default().validate().unwrap_err().to_string();
        assert!(err.contains("redis.url"), "{err}");
        let mut config = Config::default();
        config.redis.url = "redis://127.0.0.1:6379".into();
        config.validate().unwrap();
        assert!(!config.redis_is_cluster());
        config.redis.url = "redis-cluster://127.0.0.1:7000?node=127.0.0.1:7001".into();
        assert!(config.redis_is_cluster());
    }

    #[test]
    fn webhooks_are_off_by_default_and_checked_when_on() {
        let mut config = Config::default();
        config.redis.url = "redis://127.0.0.1:6379".into();
        assert!(!config.webhooks.enabled());
        config.webhooks.url = "http://backend:9000/webhook".into();
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("webhooks.secret must be set"), "{err}");
        config.webhooks.secret = "s3cret".into();
        config.validate().unwrap();
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        config.webhooks.events = vec!["presence_join".into(), "nope".into()];
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("webhooks.events"), "{err}");
    }
}

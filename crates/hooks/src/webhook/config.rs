//! [`WebhookConfig`]: the `[webhooks]` section of a configuration, its
//! defaults and its checks.

use serde::{Deserialize, Deserializer, Serialize};

use super::event::EventType;

/// Longest `batch_delay_ms` accepted.
pub const MAX_BATCH_DELAY_MS: u64 = 60_000;
/// Longest `timeout_ms` accepted.
pub const MAX_TIMEOUT_MS: u64 = 600_000;
/// Longest `retry_max_ms` accepted.
pub const MAX_RETRY_MS: u64 = 3_600_000;
/// The `[webhooks]` section of a configuration.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WebhookConfig {
    /// Where batches are POSTed (`http://` or `https://`). Empty: no webhooks.
    pub url: String,
    /// Key of the requests' HMAC-SHA256 signature; required with a `url`.
    pub secret: String,
    /// The event types sent (a list, or one string with commas); others are not.
    #[serde(deserialize_with = "list_or_commas")]
    pub events: Vec<String>,
    /// Most events per request.
    pub batch_max: usize,
    /// Longest a batch waits, after its first event, for more, in milliseconds.
    pub batch_delay_ms: u64,
    /// Deadline of one request, in milliseconds.
    pub timeout_ms: u64,
    /// First wait before a failed batch is sent again, in milliseconds.
    pub retry_initial_ms: u64,
    /// Longest wait between two attempts, in milliseconds.
    pub retry_max_ms: u64,
    /// Events kept while the backend does not take them; the oldest are dropped beyond.
    pub max_queued: usize,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            url: String::new(),
            secret: String::new(),
            events: EventType::ALL
                .iter()
                .map(|t| t.as_str().to_string())
                .collect(),
            batch_max: 100,
            batch_delay_ms: 100,
            timeout_ms: 5_000,
            retry_initial_ms: 200,
            retry_max_ms: 30_000,
            max_queued: 100_000,
        }
    }
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .field("events", &self.events)
            .field("batch_max", &self.batch_max)
            .field("batch_delay_ms", &self.batch_delay_ms)
            .field("timeout_ms", &self.timeout_ms)
            .field("retry_initial_ms", &self.retry_initial_ms)
            .field("retry_max_ms", &self.retry_max_ms)
            .field("max_queued", &self.max_queued)
            .finish()
    }
}

/// `["a", "b"]` or `"a,b"` (what an environment variable gives most easily).
fn list_or_commas<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrString {
        List(Vec<String>),
        String(String),
    }
    Ok(match ListOrString::deserialize(deserializer)? {
        ListOrString::List(list) => list,
        ListOrString::String(text) => text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
    })
}

impl WebhookConfig {
    /// Whether webhooks are on (a URL is set).
    pub fn enabled(&self) -> bool {
        !self.url.is_empty()
    }

    /// Checks values that have a valid type but make no sense; the error
    /// names the key, under `prefix` (`webhooks`). Never shows the secret.
    pub fn validate(&self, prefix: &str) -> Result<(), String> {
        let positive = [
            ("batch_max", self.batch_max as u64),
            ("timeout_ms", self.timeout_ms),
            ("retry_initial_ms", self.retry_initial_ms),
            ("retry_max_ms", self.retry_max_ms),
            ("max_queued", self.max_queued as u64),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(format!("{prefix}.{key} must be greater than 0"));
            }
        }
        let bounded = [
            ("batch_delay_ms", self.batch_delay_ms, MAX_BATCH_DELAY_MS),
            ("timeout_ms", self.timeout_ms, MAX_TIMEOUT_MS),
            ("retry_max_ms", self.retry_max_ms, MAX_RETRY_MS),
        ];
        for (key, value, max) in bounded {
            if value > max {
                return Err(format!("{prefix}.{key} must be at most {max}"));
            }
        }
        if self.retry_initial_ms > self.retry_max_ms {
            return Err(format!(
                "{prefix}.retry_initial_ms must not be greater than {prefix}.retry_max_ms"
            ));
        }
        for name in &self.events {
            if EventType::parse(name).is_none() {
                let known: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
                return Err(format!(
                    "{prefix}.events: unknown event type {name:?} (known: {})",
                    known.join(", ")
                ));
            }
        }
        if !self.enabled() {
            return Ok(());
        }
        if self.events.is_empty() {
            return Err(format!(
                "{prefix}.events must name at least one event type when {prefix}.url is set"
            ));
        }
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(format!("{prefix}.url must start with http:// or https://"));
        }
        let valid = self
            .url
            .parse::<http::Uri>()
            .ok()
            .is_some_and(|uri| uri.host().is_some_and(|h| !h.is_empty()));
        if !valid {
            return Err(format!("{prefix}.url is not a valid URL"));
        }
        if self.secret.is_empty() {
            return Err(format!(
                "{prefix}.secret must be set when {prefix}.url is set"
            ));
        }
        Ok(())
    }

    /// The enabled event types as a bit set.
    pub(super) fn event_mask(&self) -> u8 {
        self.events
            .iter()
            .filter_map(|name| EventType::parse(name))
            .fold(0, |mask, t| mask | t.bit())
    }
}

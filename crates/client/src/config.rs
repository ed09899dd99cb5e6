//! Everything a client is told before it connects, and the builder that
//! collects it.
//!
//! All settings have defaults that suit a single local node
//! (`ws://127.0.0.1:8080/ws`, JSON, anonymous); a deployment usually sets the
//! URLs, a token (or a token provider) and perhaps the codec. The builder checks
//! what it can up front (URLs parse, scheme is `ws`) so a typo fails at
//! `connect()` instead of turning into an endless reconnect loop.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use roomcast_protocol::Codec;
use url::Url;

use crate::{Backoff, Client, Error, Events};

/// What a token provider returns: a token, or why none could be had (the
/// attempt then counts as failed and is retried with backoff).
pub type TokenFuture = Pin<Box<dyn Future<Output = Result<String, String>> + Send>>;

pub(crate) type TokenProvider = Arc<dyn Fn() -> TokenFuture + Send + Sync>;

/// The settled configuration a running client uses.
#[derive(Clone)]
pub(crate) struct Config {
    pub urls: Vec<Url>,
    pub codec: Codec,
    pub token: Option<String>,
    pub token_provider: Option<TokenProvider>,
    pub backoff: Backoff,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub heartbeat_slack: Duration,
    pub compression: bool,
    pub publish_attempts: u32,
    pub refresh_margin: Duration,
}

impl Config {
    /// Where the token for the next `hello` comes from.
    pub(crate) async fn token(&self) -> Result<Option<String>, String> {
        match &self.token_provider {
            Some(provider) => provider().await.map(Some),
            None => Ok(self.token.clone()),
        }
    }
}

/// Builds a [`Client`]: `Client::builder().url(…).connect().await`.
#[must_use = "a builder does nothing until `connect` is called"]
pub struct ClientBuilder {
    urls: Vec<String>,
    codec: Codec,
    token: Option<String>,
    token_provider: Option<TokenProvider>,
    backoff: Backoff,
    connect_timeout: Duration,
    request_timeout: Duration,
    heartbeat_slack: Duration,
    compression: bool,
    publish_attempts: u32,
    refresh_margin: Duration,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        ClientBuilder {
            urls: Vec::new(),
            codec: Codec::Json,
            token: None,
            token_provider: None,
            backoff: Backoff::default(),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            heartbeat_slack: Duration::from_secs(5),
            compression: true,
            publish_attempts: 5,
            refresh_margin: Duration::from_secs(5),
        }
    }
}

impl ClientBuilder {
    /// Adds a node URL (`ws://host:port/ws`). With several, each new
    /// connection attempt goes to the next one in turn, so a client that lost
    /// a node tries another first. Without any, `ws://127.0.0.1:8080/ws`.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.urls.push(url.into());
        self
    }

    /// Adds several node URLs (see [`ClientBuilder::url`]).
    pub fn urls<I, S>(mut self, urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.urls.extend(urls.into_iter().map(Into::into));
        self
    }

    /// The encoding: [`Codec::Json`] (default) or [`Codec::MsgPack`].
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// A fixed token (JWT) sent in every `hello`. Without one (and without a
    /// provider) the client connects anonymously.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Asks `provider` for a token before every connection attempt, so an
    /// expired token is replaced on reconnect, and before the connection's
    /// token expires (when `welcome` says when: `token_expires_at`), to hand
    /// the node a new one with `refresh` without reconnecting (see
    /// [`ClientBuilder::refresh_margin`]). Takes precedence over
    /// [`ClientBuilder::token`]. When the server refuses a provided token
    /// twice in a row the client stops with [`Error::Unauthorized`].
    pub fn token_provider<F, Fut>(mut self, provider: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, String>> + Send + 'static,
    {
        self.token_provider = Some(Arc::new(move || -> TokenFuture { Box::pin(provider()) }));
        self
    }

    /// The reconnection policy (exponential backoff with full jitter).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// How long one attempt may take, from the TCP connect to `welcome`
    /// (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long a command waits for its reply (default 10 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Extra silence tolerated on top of two ping intervals before the
    /// connection is declared dead (default 5 s).
    pub fn heartbeat_slack(mut self, slack: Duration) -> Self {
        self.heartbeat_slack = slack;
        self
    }

    /// How many times one publish may be sent in all (default 5): the first
    /// send, the resends after reconnects (a publish in flight when the
    /// connection drops is sent again, with the same key, on the next
    /// connection) and the retries after `unavailable`. At least 1.
    pub fn publish_attempts(mut self, attempts: u32) -> Self {
        self.publish_attempts = attempts.max(1);
        self
    }

    /// With a token provider, a token is refreshed at 80 % of its remaining
    /// lifetime and at least this long before it expires (default 5 s; at
    /// most half the remaining lifetime, for short tokens).
    pub fn refresh_margin(mut self, margin: Duration) -> Self {
        self.refresh_margin = margin;
        self
    }

    /// Whether to offer permessage-deflate (default on; both directions
    /// without context takeover, so no compression state outlives a message).
    pub fn compression(mut self, on: bool) -> Self {
        self.compression = on;
        self
    }

    /// Checks the configuration without connecting.
    pub(crate) fn build(self) -> Result<Config, Error> {
        let urls = if self.urls.is_empty() {
            vec!["ws://127.0.0.1:8080/ws".to_string()]
        } else {
            self.urls
        };
        let urls = urls
            .iter()
            .map(|u| parse_url(u))
            .collect::<Result<Vec<_>, _>>()?;
        if self.backoff.base > self.backoff.cap {
            return Err(Error::Config("backoff base is larger than its cap".into()));
        }
        if self.connect_timeout.is_zero() || self.request_timeout.is_zero() {
            return Err(Error::Config("timeouts must be longer than zero".into()));
        }
        Ok(Config {
            urls,
            codec: self.codec,
            token: self.token,
            token_provider: self.token_provider,
            backoff: self.backoff,
            connect_timeout: self.connect_timeout,
            request_timeout: self.request_timeout,
            heartbeat_slack: self.heartbeat_slack,
            compression: self.compression,
            publish_attempts: self.publish_attempts,
            refresh_margin: self.refresh_margin,
        })
    }

    /// Starts the client and waits for its first `welcome`.
    ///
    /// Failed attempts are retried under the backoff policy, so with
    /// `max_attempts: None` this waits until a node answers (wrap it in a
    /// timeout if that is not what you want). It fails when the policy gives
    /// up, when the token is refused, or when the configuration is unusable.
    /// Must be called inside a tokio runtime: the connection is driven by a
    /// spawned task.
    pub async fn connect(self) -> Result<(Client, Events), Error> {
        let config = self.build()?;
        Client::start(config).await
    }
}

fn parse_url(raw: &str) -> Result<Url, Error> {
    let url = Url::parse(raw).map_err(|e| Error::Config(format!("bad URL {raw:?}: {e}")))?;
    match url.scheme() {
        "ws" => {}
        "wss" => {
            return Err(Error::Config(format!(
                "{raw}: wss:// is not supported by the Rust client yet (built without TLS); \
                 terminate TLS in front of it or use ws://"
            )))
        }
        other => {
            return Err(Error::Config(format!(
                "{raw}: scheme must be ws, not {other}"
            )))
        }
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(Error::Config(format!("{raw}: no host")));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_when_the_client_is_built() {
        assert!(parse_url("ws://127.0.0.1:8080/ws").is_ok());
        for bad in ["wss://example.com/ws", "http://h/ws", "not a url", "ws://"] {
            assert!(
                matches!(parse_url(bad), Err(Error::Config(_))),
                "{bad} should be refused"
            );
        }
        let wss = parse_url("wss://example.com/ws").unwrap_err().to_string();
        assert!(wss.contains("not supported"), "{wss}");
    }

    #[test]
    fn no_url_means_the_local_default_node() {
        let config = ClientBuilder::default().build().unwrap();
        assert_eq!(config.urls[0].as_str(), "ws://127.0.0.1:8080/ws");
    }
}

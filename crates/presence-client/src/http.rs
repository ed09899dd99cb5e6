//! The client's HTTP transport: one request to the presence service and its
//! answer, and how such a call fails ([`PresenceError`]).
//!
//! The HTTP client is hyper's (already in the tree through axum); the
//! service speaks plain HTTP on an internal network, so no TLS. The sync
//! task and the queries each hold a clone of one [`Transport`]: the clones
//! share its connection pool.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::ErrorBody;

/// Why a call to the presence service failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PresenceError {
    #[error("presence service unreachable: {0}")]
    Unavailable(String),
    #[error("presence service did not answer in time")]
    Timeout,
    #[error("presence service refused the key")]
    Unauthorized,
    #[error("presence service answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("bad answer from the presence service: {0}")]
    Decode(String),
}

/// Requests to one presence service, with its key. Cheap to clone; clones
/// share the connection pool.
#[derive(Clone)]
pub(crate) struct Transport {
    http: Client<HttpConnector, Full<Bytes>>,
    base: String,
    auth: Option<HeaderValue>,
}

impl Transport {
    /// A transport to the service at `url` (`http://host:port`), sending
    /// `key` (if any, and not empty) as `Authorization: Bearer`, keeping up
    /// to `max_idle` idle connections.
    pub(crate) fn new(url: &str, key: Option<&str>, max_idle: usize) -> Transport {
        let http = Client::builder(TokioExecutor::new())
            // Without a timer the pool never closes idle connections.
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(max_idle)
            .build_http();
        let auth = key
            .filter(|k| !k.is_empty())
            .and_then(|k| HeaderValue::from_str(&format!("Bearer {k}")).ok());
        Transport {
            http,
            base: url.trim_end_matches('/').to_string(),
            auth,
        }
    }

    /// One request; the status and the whole body, within `timeout`.
    pub(crate) async fn call<T: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&T>,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), PresenceError> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some(auth) = &self.auth {
            request = request.header(header::AUTHORIZATION, auth.clone());
        }
        let payload = match body {
            Some(body) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                serde_json::to_vec(body).map_err(|e| PresenceError::Decode(e.to_string()))?
            }
            None => Vec::new(),
        };
        let request = request
            .body(Full::new(Bytes::from(payload)))
            .map_err(|e| PresenceError::Unavailable(format!("bad request: {e}")))?;
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| PresenceError::Unavailable(error_chain(&e)))?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| PresenceError::Unavailable(e.to_string()))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| PresenceError::Timeout)?
    }
}

pub(crate) fn expect_ok(status: StatusCode, body: &[u8]) -> Result<(), PresenceError> {
    if status.is_success() {
        return Ok(());
    }
    if status == StatusCode::UNAUTHORIZED {
        return Err(PresenceError::Unauthorized);
    }
    let message = serde_json::from_slice::<ErrorBody>(body)
        .map(|e| e.message)
        .unwrap_or_else(|_| String::from_utf8_lossy(body).into_owned());
    Err(PresenceError::Status {
        status: status.as_u16(),
        message,
    })
}

pub(crate) fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, PresenceError> {
    serde_json::from_slice(body).map_err(|e| PresenceError::Decode(e.to_string()))
}

/// The error and its causes, joined: hyper's top-level message alone
/// ("client error (Connect)") does not say what went wrong.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
}

/// Percent-encodes one path segment (room and session names).
pub(crate) fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:@=".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests;

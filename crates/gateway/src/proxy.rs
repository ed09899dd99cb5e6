//! The proxies: the node asks the application's backend before it accepts
//! a connection, a join or a publish, and forwards `rpc` frames to it.
//! Request and answer shapes are in `docs/hooks.md`.
//!
//! One [`Proxy`] is built from each (re)loaded `proxy` configuration; it
//! shares the node's HTTP client. Every call has a deadline, waits for one
//! of `max_in_flight` slots within it, carries the trace context, and is
//! counted in the metrics. Only connect and join calls, which merely ask,
//! are retried.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, AUTHORIZATION};
use roomcast_hooks::http::{Backend, CallError};
use serde_json::{Map, Value};
use tokio::sync::Semaphore;

use roomcast_protocol::{close, Data, ErrorCode};
use serde_json::json;

use crate::auth::Identity;
use crate::config::{ProxyConfig, ProxyEndpoint};
use crate::conn_handle::ConnHandle;
use crate::error::NodeError;
use crate::metrics::Metrics;
use crate::telemetry;

/// The calls a node makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Connect = 0,
    Join = 1,
    Publish = 2,
    Rpc = 3,
    Refresh = 4,
}

impl Call {
    pub const ALL: [Call; 5] = [
        Call::Connect,
        Call::Join,
        Call::Publish,
        Call::Rpc,
        Call::Refresh,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Call::Connect => "connect",
            Call::Join => "join",
            Call::Publish => "publish",
            Call::Rpc => "rpc",
            Call::Refresh => "refresh",
        }
    }

    /// Calls that only ask a question, so a retry cannot do harm twice.
    fn idempotent(self) -> bool {
        matches!(self, Call::Connect | Call::Join | Call::Refresh)
    }
}

/// What the backend said.
#[derive(Debug)]
pub enum Verdict {
    /// `{"result": {...}}`: go ahead (the object may carry replacements).
    Allow(Map<String, Value>),
    /// `{"error": {...}}`: refuse, with the backend's code and message.
    Deny {
        code: Option<Value>,
        message: String,
    },
    /// No usable answer; the endpoint's `fail_open` decides.
    Failed { reason: String, fail_open: bool },
}

/// The proxies of one configuration.
pub struct Proxy {
    config: ProxyConfig,
    backend: Backend,
    slots: Arc<Semaphore>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl Proxy {
    pub fn new(config: &ProxyConfig, backend: Backend, node_id: &str) -> Proxy {
        let mut headers = Vec::new();
        if let Ok(v) = HeaderValue::from_str(node_id) {
            headers.push((HeaderName::from_static("x-roomcast-node"), v));
        }
        if !config.key.expose().is_empty() {
            if let Ok(mut v) = HeaderValue::from_str(&format!("Bearer {}", config.key.expose())) {
                v.set_sensitive(true);
                headers.push((AUTHORIZATION, v));
            }
        }
        Proxy {
            slots: Arc::new(Semaphore::new(config.max_in_flight.max(1))),
            config: config.clone(),
            backend,
            headers,
        }
    }

    pub fn forward_headers(&self) -> &[String] {
        &self.config.forward_headers
    }

    /// The endpoint for `call` on `name` (a room, or an RPC method; unused
    /// for connect), or `None` when that call is not proxied.
    pub fn endpoint(&self, call: Call, name: &str) -> Option<&ProxyEndpoint> {
        let top = match call {
            Call::Connect => return Some(&self.config.connect).filter(|e| !e.url.is_empty()),
            Call::Refresh => return Some(&self.config.refresh).filter(|e| !e.url.is_empty()),
            Call::Join => &self.config.join,
            Call::Publish => &self.config.publish,
            Call::Rpc => &self.config.rpc,
        };
        let ns = name.split_once(':').map(|(ns, _)| ns);
        let own = ns
            .and_then(|ns| self.config.namespaces.get(ns))
            .and_then(|n| match call {
                Call::Join => n.join.as_ref(),
                Call::Publish => n.publish.as_ref(),
                Call::Rpc => n.rpc.as_ref(),
                Call::Connect | Call::Refresh => None,
            });
        Some(own.unwrap_or(top)).filter(|e| !e.url.is_empty())
    }

    /// Makes one call (with retries where allowed) and reads the verdict.
    pub async fn call(
        &self,
        call: Call,
        endpoint: &ProxyEndpoint,
        body: &Value,
        metrics: &Metrics,
    ) -> Verdict {
        let started = Instant::now();
        let timeout = Duration::from_millis(endpoint.timeout_ms);
        let deadline = started + timeout;
        let verdict = self.exchange(call, endpoint, body, deadline).await;
        metrics.proxy_call(call, &verdict, started.elapsed());
        if let Verdict::Failed { reason, .. } = &verdict {
            tracing::warn!(call = call.name(), url = %endpoint.url, reason, "proxy call failed");
        }
        verdict
    }

    async fn exchange(
        &self,
        call: Call,
        endpoint: &ProxyEndpoint,
        body: &Value,
        deadline: Instant,
    ) -> Verdict {
        let failed = |reason: String| Verdict::Failed {
            reason,
            fail_open: endpoint.fail_open,
        };
        let Ok(Ok(_permit)) =
            tokio::time::timeout_at(deadline.into(), self.slots.clone().acquire_owned()).await
        else {
            return failed(format!(
                "all {} proxy slots busy until the deadline",
                self.config.max_in_flight
            ));
        };
        let mut headers = self.headers.clone();
        if let Some(tp) = telemetry::current_traceparent() {
            if let Ok(v) = HeaderValue::from_str(&tp) {
                headers.push((HeaderName::from_static("traceparent"), v));
            }
        }
        let payload = Bytes::from(serde_json::to_vec(body).unwrap_or_default());
        let attempts = if call.idempotent() {
            1 + self.config.retries
        } else {
            1
        };
        let mut last = String::new();
        for attempt in 0..attempts {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match self
                .backend
                .post_json(&endpoint.url, &headers, payload.clone(), left)
                .await
            {
                Ok(response) if response.status == http::StatusCode::OK => {
                    return read_answer(&response.body).unwrap_or_else(failed);
                }
                Ok(response) if response.status.is_server_error() => {
                    last = format!("status {}", response.status);
                }
                Ok(response) => return failed(format!("status {}", response.status)),
                Err(CallError::Timeout(_)) => {
                    last = format!("no answer within {} ms", endpoint.timeout_ms);
                    break;
                }
                Err(e) => last = e.to_string(),
            }
            if attempt + 1 < attempts {
                tracing::debug!(call = call.name(), reason = %last, "proxy call retried");
            }
        }
        if last.is_empty() {
            last = format!("no answer within {} ms", endpoint.timeout_ms);
        }
        failed(last)
    }
}

/// What the connect proxy is told about the WebSocket that sent `hello`.
pub struct ConnectRequest<'a> {
    pub remote: std::net::SocketAddr,
    /// MessagePack (true) or JSON.
    pub binary: bool,
    /// The upgrade's headers named in `proxy.forward_headers`.
    pub headers: &'a [(String, String)],
}

/// The connect proxy's decision on a `hello`: the identity to connect
/// with, or the refusal (error frame code, message, close code).
pub async fn connect(
    proxy: &Proxy,
    metrics: &Metrics,
    upgrade: &ConnectRequest<'_>,
    token: Option<&str>,
    identity: Identity,
    resume: bool,
) -> Result<Identity, (ErrorCode, String, u16)> {
    let Some(endpoint) = proxy.endpoint(Call::Connect, "") else {
        return Ok(identity);
    };
    let headers: Map<String, Value> = upgrade
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let mut body = json!({
        "remote_addr": upgrade.remote.to_string(),
        "protocol": if upgrade.binary { "msgpack" } else { "json" },
        "headers": headers,
        "resume": resume,
    });
    if let Some(token) = token {
        body["token"] = json!(token);
    }
    if !identity.anonymous {
        body["user"] = json!(&*identity.user);
    }
    match proxy.call(Call::Connect, endpoint, &body, metrics).await {
        Verdict::Allow(result) => match apply_connect(identity.clone(), result) {
            Ok(identity) => Ok(identity),
            Err(e) => {
                tracing::warn!(error = %e, "connect proxy answer unusable");
                if endpoint.fail_open {
                    Ok(identity)
                } else {
                    Err(unavailable_connect())
                }
            }
        },
        Verdict::Deny { code, message } => {
            if code.as_ref().and_then(Value::as_u64) == Some(u64::from(close::UNAUTHORIZED)) {
                Err((ErrorCode::Unauthorized, message, close::UNAUTHORIZED))
            } else {
                Err((ErrorCode::Forbidden, message, close::FORBIDDEN))
            }
        }
        Verdict::Failed {
            fail_open: true, ..
        } => Ok(identity),
        Verdict::Failed { .. } => Err(unavailable_connect()),
    }
}

fn unavailable_connect() -> (ErrorCode, String, u16) {
    (
        ErrorCode::Unavailable,
        "the application's backend did not answer; try again later".into(),
        close::TRY_AGAIN_LATER,
    )
}

/// The identity after the backend's `result`: each field it gives
/// replaces the node's own.
fn apply_connect(
    mut identity: Identity,
    mut result: Map<String, Value>,
) -> Result<Identity, String> {
    let patterns = |v: Value, key: &str| -> Result<Vec<String>, String> {
        serde_json::from_value::<Vec<String>>(v)
            .map_err(|_| format!("`{key}` is not a list of strings"))
    };
    if let Some(user) = result.remove("user") {
        let user = user
            .as_str()
            .filter(|u| !u.is_empty() && u.len() <= MAX_USER_BYTES)
            .ok_or("`user` is not a non-empty string")?;
        identity.user = Arc::from(user);
        if identity.anonymous {
            // An asserted user: no longer anonymous, but still free to join
            // what an anonymous one could, unless `rooms` says otherwise.
            identity.anonymous = false;
            identity.rooms = vec!["*".to_string()];
        }
    }
    if let Some(rooms) = result.remove("rooms") {
        identity.rooms = patterns(rooms, "rooms")?;
        identity.anonymous = false;
    }
    if let Some(publish) = result.remove("publish") {
        identity.publish = patterns(publish, "publish")?;
    }
    if let Some(info) = result.remove("info") {
        identity.info = Some(info).filter(|i| !i.is_null());
    }
    if let Some(subs) = result.remove("subs") {
        identity.subs = patterns(subs, "subs")?;
    }
    Ok(identity)
}

/// Longest user id a backend may assign.
const MAX_USER_BYTES: usize = 256;

/// The join proxy's decision: `Ok(true)` when the backend allowed the join
/// (the token's room patterns are then not consulted), `Ok(false)` when no
/// proxy decided (none configured, or failed open).
pub async fn join(
    proxy: &Proxy,
    metrics: &Metrics,
    conn: &ConnHandle,
    room: &str,
) -> Result<bool, NodeError> {
    let Some(endpoint) = proxy.endpoint(Call::Join, room) else {
        return Ok(false);
    };
    let mut body = json!({"user": conn.user(), "session": &*conn.session, "room": room});
    if let Some(info) = &conn.identity.info {
        body["info"] = info.clone();
    }
    match proxy.call(Call::Join, endpoint, &body, metrics).await {
        Verdict::Allow(_) => Ok(true),
        Verdict::Deny { message, .. } => Err(NodeError::new(ErrorCode::Forbidden, message)),
        Verdict::Failed {
            fail_open: true, ..
        } => Ok(false),
        Verdict::Failed { .. } => Err(unavailable("join")),
    }
}

/// The publish proxy's decision: the data to publish (the client's, or the
/// backend's replacement).
pub async fn publish(
    proxy: &Proxy,
    metrics: &Metrics,
    conn: &ConnHandle,
    room: &str,
    data: Data,
) -> Result<Data, NodeError> {
    let Some(endpoint) = proxy.endpoint(Call::Publish, room) else {
        return Ok(data);
    };
    let mut body =
        json!({"user": conn.user(), "session": &*conn.session, "room": room, "data": data});
    match proxy.call(Call::Publish, endpoint, &body, metrics).await {
        Verdict::Allow(mut result) => Ok(match result.remove("data") {
            Some(replaced) => replaced,
            None => body["data"].take(),
        }),
        Verdict::Deny { message, .. } => Err(NodeError::new(ErrorCode::Forbidden, message)),
        Verdict::Failed {
            fail_open: true, ..
        } => Ok(body["data"].take()),
        Verdict::Failed { .. } => Err(unavailable("publish")),
    }
}

/// An `rpc` frame: the backend's `data`, or its error.
pub async fn rpc(
    proxy: &Proxy,
    metrics: &Metrics,
    conn: &ConnHandle,
    method: &str,
    data: Data,
) -> Result<Data, NodeError> {
    if method.is_empty() || method.len() > MAX_METHOD_BYTES {
        return Err(NodeError::bad_request(format!(
            "method must be 1 to {MAX_METHOD_BYTES} bytes"
        )));
    }
    let Some(endpoint) = proxy.endpoint(Call::Rpc, method) else {
        return Err(NodeError::bad_request(format!(
            "no rpc endpoint for {method}"
        )));
    };
    let body =
        json!({"user": conn.user(), "session": &*conn.session, "method": method, "data": data});
    match proxy.call(Call::Rpc, endpoint, &body, metrics).await {
        Verdict::Allow(mut result) => Ok(result.remove("data").unwrap_or(Value::Null)),
        Verdict::Deny { code, message } => {
            let code = code
                .and_then(|c| serde_json::from_value::<ErrorCode>(c).ok())
                .filter(|c| {
                    matches!(
                        c,
                        ErrorCode::BadRequest
                            | ErrorCode::Forbidden
                            | ErrorCode::LimitExceeded
                            | ErrorCode::Unavailable
                    )
                })
                .unwrap_or(ErrorCode::Forbidden);
            Err(NodeError::new(code, message))
        }
        Verdict::Failed { .. } => Err(unavailable("rpc")),
    }
}

/// How long before a connection's token expires the refresh proxy is
/// asked for a new expiry, when one is configured (0: not configured).
pub fn refresh_ahead_ms(proxy: &Proxy) -> u64 {
    match proxy.endpoint(Call::Refresh, "") {
        Some(_) => proxy.config.refresh_ahead_ms.max(1),
        None => 0,
    }
}

/// Asks the refresh proxy for a new expiry of `conn`'s token: `Some(Unix
/// seconds)` when the backend extended it, `None` when it refused, failed,
/// or answered an expiry that is not later than the current one (the
/// connection then ends at its expiry with 4401).
pub async fn refresh(proxy: &Proxy, metrics: &Metrics, conn: &ConnHandle) -> Option<u64> {
    let endpoint = proxy.endpoint(Call::Refresh, "")?;
    let current = conn.token_expires_at();
    let mut body = json!({"user": conn.user(), "session": &*conn.session, "expires_at": current});
    if let Some(info) = &conn.identity.info {
        body["info"] = info.clone();
    }
    match proxy.call(Call::Refresh, endpoint, &body, metrics).await {
        Verdict::Allow(result) => {
            let next = result.get("expires_at").and_then(Value::as_u64);
            match next {
                Some(next) if Some(next) > current => Some(next),
                _ => {
                    tracing::warn!(user = %conn.user(), "refresh proxy answer has no later `expires_at`");
                    None
                }
            }
        }
        Verdict::Deny { .. } | Verdict::Failed { .. } => None,
    }
}

/// Longest RPC method name.
const MAX_METHOD_BYTES: usize = 128;

fn unavailable(call: &str) -> NodeError {
    NodeError::new(
        ErrorCode::Unavailable,
        format!("the application's backend did not answer the {call} check"),
    )
}

/// `{"result": {...}}` or `{"error": {"code"?, "message"?}}`.
fn read_answer(body: &[u8]) -> Result<Verdict, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("answer is not JSON: {e}"))?;
    let mut object = match value {
        Value::Object(o) => o,
        _ => return Err("answer is not a JSON object".into()),
    };
    if let Some(error) = object.remove("error") {
        let (code, message) = match error {
            Value::Object(mut e) => (
                e.remove("code"),
                match e.remove("message") {
                    Some(Value::String(m)) => m,
                    _ => "refused by the application".to_string(),
                },
            ),
            _ => (None, "refused by the application".to_string()),
        };
        return Ok(Verdict::Deny { code, message });
    }
    match object.remove("result") {
        Some(Value::Object(result)) => Ok(Verdict::Allow(result)),
        Some(Value::Null) => Ok(Verdict::Allow(Map::new())),
        Some(_) => Err("`result` is not an object".into()),
        None => Err("answer has neither `result` nor `error`".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NamespaceProxy;

    fn endpoint(url: &str) -> ProxyEndpoint {
        ProxyEndpoint {
            url: url.into(),
            ..ProxyEndpoint::default()
        }
    }

    #[test]
    fn a_namespace_entry_replaces_the_top_level_endpoint() {
        let mut config = ProxyConfig {
            join: endpoint("http://b/join"),
            ..ProxyConfig::default()
        };
        config.namespaces.insert(
            "game".into(),
            NamespaceProxy {
                join: Some(endpoint("http://b/game/join")),
                publish: Some(endpoint("http://b/game/publish")),
                ..NamespaceProxy::default()
            },
        );
        config.namespaces.insert(
            "public".into(),
            NamespaceProxy {
                join: Some(endpoint("")),
                ..NamespaceProxy::default()
            },
        );
        let proxy = Proxy::new(&config, Backend::new(), "n1");
        let url = |call, name| proxy.endpoint(call, name).map(|e| e.url.clone());
        assert_eq!(url(Call::Join, "lobby").as_deref(), Some("http://b/join"));
        assert_eq!(
            url(Call::Join, "game:1").as_deref(),
            Some("http://b/game/join")
        );
        assert_eq!(url(Call::Join, "public:x"), None);
        assert_eq!(url(Call::Join, "other:x").as_deref(), Some("http://b/join"));
        assert_eq!(
            url(Call::Publish, "game:1").as_deref(),
            Some("http://b/game/publish")
        );
        assert_eq!(url(Call::Publish, "lobby"), None);
        assert_eq!(url(Call::Connect, ""), None);
    }

    #[test]
    fn answers_are_read_strictly() {
        assert!(matches!(read_answer(br#"{"result":{}}"#), Ok(Verdict::Allow(m)) if m.is_empty()));
        assert!(matches!(
            read_answer(br#"{"error":{"code":4403,"message":"banned"}}"#),
            Ok(Verdict::Deny { message, .. }) if message == "banned"
        ));
        assert!(read_answer(b"[]").is_err());
        assert!(read_answer(b"{}").is_err());
        assert!(read_answer(b"not json").is_err());
        assert!(read_answer(br#"{"result":3}"#).is_err());
    }
}

//! Who may use the admin page: the login (`POST /admin/login` with the
//! admin key, which sets the session cookie), the logout, the session
//! check the page starts with, and the layers in front of every admin
//! route: the session check of `/admin/api`, the same-origin check of
//! every request that changes something, and the security headers.
//!
//! The cookie is `HttpOnly` (no script reads it), `SameSite=Strict` (no
//! other site's page sends it) and `Path=/admin` (no other route of the
//! node sees it). Wrong keys count against the address's budget of
//! `admin.max_login_failures_per_minute`, with the limiter the API key
//! uses.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use roomcast_protocol::ErrorCode;
use serde::Deserialize;
use serde_json::json;

use super::session::Sessions;
use crate::config::{AdminConfig, Secret};
use crate::error::NodeError;
use crate::front::Peer;
use crate::layers::{keys_match, KeyFailures};

/// The session cookie's name.
pub const COOKIE: &str = "roomcast_admin";

/// What the admin routes share: the key, the sessions, the failure budget.
pub struct Admin {
    key: Secret,
    pub sessions: Sessions,
    failures: KeyFailures,
    max_failures: u32,
    secure_cookie: bool,
    node: Arc<str>,
}

impl Admin {
    pub fn new(config: &AdminConfig, node: Arc<str>) -> Admin {
        Admin {
            key: config.key.clone(),
            sessions: Sessions::new(
                config.key.expose(),
                Duration::from_millis(config.session_ttl_ms),
            ),
            failures: KeyFailures::default(),
            max_failures: config.max_login_failures_per_minute,
            secure_cookie: config.secure_cookie,
            node,
        }
    }

    fn cookie(&self, value: &str, max_age: u64) -> HeaderValue {
        let secure = if self.secure_cookie { "; Secure" } else { "" };
        let cookie = format!(
            "{COOKIE}={value}; Path=/admin; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}"
        );
        HeaderValue::from_str(&cookie).expect("a cookie of token characters")
    }
}

/// The session token the request carries, if any.
fn token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

fn not_logged_in() -> Response {
    NodeError::new(
        ErrorCode::Unauthorized,
        "not logged in to the admin page, or the session expired",
    )
    .into_response()
}

#[derive(Deserialize)]
struct Login {
    key: String,
}

/// `POST /admin/login` with `{"key": …}`: sets the session cookie, or 401.
pub async fn login(
    State(admin): State<Arc<Admin>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let ip = peer.addr.ip();
    if !admin.failures.check(ip, false, admin.max_failures) {
        return NodeError::new(
            ErrorCode::RateLimited,
            "too many wrong admin keys from this address; try again in a minute",
        )
        .into_response();
    }
    let Some(login) = body
        .ok()
        .and_then(|b| serde_json::from_slice::<Login>(&b).ok())
    else {
        return NodeError::bad_request("the body must be {\"key\": \"…\"}").into_response();
    };
    if !keys_match(&login.key, admin.key.expose()) {
        admin.failures.check(ip, true, admin.max_failures);
        tracing::warn!(%ip, "admin login refused: wrong key");
        return NodeError::new(ErrorCode::Unauthorized, "wrong admin key").into_response();
    }
    tracing::info!(%ip, "admin login");
    let ttl = admin.sessions.ttl();
    let token = admin.sessions.issue();
    let expires_at_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| (d + ttl).as_millis() as u64);
    (
        [(header::SET_COOKIE, admin.cookie(&token, ttl.as_secs()))],
        Json(json!({"node": &*admin.node, "expires_at_ms": expires_at_ms})),
    )
        .into_response()
}

/// `POST /admin/logout`: ends the session and clears the cookie.
pub async fn logout(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Response {
    if let Some(session) = token(&headers).and_then(|t| admin.sessions.check(t)) {
        admin.sessions.revoke(&session);
    }
    (
        [(header::SET_COOKIE, admin.cookie("", 0))],
        Json(json!({"logged_out": true})),
    )
        .into_response()
}

/// `GET /admin/session`: the node and the session's expiry, or 401.
pub async fn session(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Response {
    match token(&headers).and_then(|t| admin.sessions.check(t)) {
        Some(session) => Json(json!({
            "node": &*admin.node,
            "expires_at_ms": session.expires_at * 1000,
        }))
        .into_response(),
        None => not_logged_in(),
    }
}

/// Lets a request through to `/admin/api` only with a valid session.
pub async fn require_session(
    State(admin): State<Arc<Admin>>,
    request: Request,
    next: Next,
) -> Response {
    match token(request.headers()).and_then(|t| admin.sessions.check(t)) {
        Some(_) => next.run(request).await,
        None => not_logged_in(),
    }
}

/// Refuses a request that changes something unless it comes from the admin
/// page itself. A browser says where a request comes from in
/// `Sec-Fetch-Site`: only `same-origin` (and `none`, a request the user
/// made) pass; `same-site` does not, since a sibling subdomain's page would
/// carry the `SameSite=Strict` cookie. Without that header (an older
/// browser, a script), an `Origin` must name the host the request was sent
/// to (`X-Forwarded-Host` behind a proxy that rewrites `Host`), and no
/// `Origin` passes: only browsers send one, and they send it on every POST.
pub async fn same_origin(request: Request, next: Next) -> Response {
    if matches!(*request.method(), Method::GET | Method::HEAD) {
        return next.run(request).await;
    }
    let headers = request.headers();
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let allowed = match text("sec-fetch-site") {
        Some(site) => site == "same-origin" || site == "none",
        None => match text("origin") {
            None => true,
            Some(origin) => {
                let origin_host = origin
                    .strip_prefix("http://")
                    .or_else(|| origin.strip_prefix("https://"))
                    .unwrap_or(origin);
                [text("x-forwarded-host"), text("host")]
                    .into_iter()
                    .flatten()
                    .any(|host| origin_host.eq_ignore_ascii_case(host))
            }
        },
    };
    if !allowed {
        return NodeError::new(
            ErrorCode::Forbidden,
            "cross-site request to the admin page refused",
        )
        .into_response();
    }
    next.run(request).await
}

/// What every admin response carries: the page may load only its own
/// files and talk only to this node, may not be framed, sends no referrer,
/// and what it shows is not cached.
pub async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_token_is_found_among_other_cookies() {
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_static("a=1; b=2"));
        assert_eq!(token(&headers), None);
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("x=y;  roomcast_admin=123.n.m ; z=w"),
        );
        assert_eq!(token(&headers), Some("123.n.m"));
        let mut prefixed = HeaderMap::new();
        prefixed.insert(
            header::COOKIE,
            HeaderValue::from_static("roomcast_admin_other=1"),
        );
        assert_eq!(token(&prefixed), None);
    }
}

//! The HTTP API: routes, the bearer-key check, and handlers that read as
//! the happy path.
//!
//! The key check is one middleware over the `/v1` routes (constant time:
//! both sides are hashed with SHA-256, then compared with `subtle`, so
//! neither the key's bytes nor its length leak through timing). Operations
//! (`/healthz`, `/readyz`, `/metrics`) need no key, like the gateway's.
//! Handlers hold the state lock only for in-memory work, and queue the
//! events it produced before releasing it; Redis is touched only by the
//! parked-session calls, each bounded by the Redis command timeout.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, Path, Request, State as AxumState};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use parking_lot::Mutex;
use roomcast_hooks::webhook::Webhooks;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::api::{
    EndUserRequest, EndUserResponse, ErrorBody, LookupRequest, LookupResponse, MembersResponse,
    ParkManyRequest, ParkManyResponse, ParkRequest, SyncRequest, SyncResponse, TakeManyRequest,
    TakeManyResponse, TakeResponse,
};
use crate::events::EventQueue;
use crate::metrics::{Gauges, Metrics};
use crate::redis::Redis;
use crate::state::{Event, State, MAX_NAME_BYTES};
use crate::store::{self, ParkedRecords};

/// Largest sync body: a full sync of a node with tens of thousands of
/// sessions is tens of megabytes of JSON.
pub const MAX_SYNC_BYTES: usize = 128 << 20;
/// Largest body of the other calls (a parked record).
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// Largest body of `POST /v1/park`: the gateway's client sends about
/// 1 MB of records per request at most, or one record of up to 1 MiB.
pub const MAX_PARK_BATCH_BYTES: usize = 4 << 20;
/// Longest a session record may stay parked: 30 days.
pub const MAX_PARK_MS: u64 = 30 * 24 * 3600 * 1000;
/// Most users plus sessions one lookup may ask about.
pub const MAX_LOOKUP: usize = 10_000;

/// Everything the handlers share.
pub struct App {
    pub state: Mutex<State>,
    pub events: Arc<EventQueue>,
    /// The backend's webhooks, when `webhooks.url` is set.
    pub webhooks: Option<Webhooks>,
    pub store: ParkedRecords,
    pub redis: Redis,
    pub metrics: Arc<Metrics>,
    /// SHA-256 of `presence.key`, when one is configured.
    pub key_hash: Option<[u8; 32]>,
    pub default_lease: Duration,
    /// This process's incarnation, returned by every sync.
    pub incarnation: String,
}

impl App {
    /// Queues the events of a state change, for the webhooks and (joins and
    /// leaves) for Redis; call with the state lock held, so they queue in
    /// the order the state produced them. Never waits.
    pub fn publish(&self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        if let Some(webhooks) = &self.webhooks {
            for event in &events {
                webhooks.push(crate::webhooks::webhook_event(event));
            }
        }
        self.events.push_all(events);
    }
}

pub fn router(app: Arc<App>) -> Router {
    let v1 = Router::new()
        .route(
            "/v1/nodes/{node}/sync",
            post(sync).layer(DefaultBodyLimit::max(MAX_SYNC_BYTES)),
        )
        .route("/v1/rooms/{room}/members", get(members))
        .route("/v1/lookup", post(lookup))
        .route("/v1/sessions/{session}", put(park))
        .route("/v1/sessions/{session}/take", post(take))
        .route("/v1/take", post(take_many))
        .route(
            "/v1/park",
            post(park_many).layer(DefaultBodyLimit::max(MAX_PARK_BATCH_BYTES)),
        )
        .route("/v1/users/{user}/end", post(end_user))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .route_layer(middleware::from_fn_with_state(app.clone(), require_key));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(v1)
        .with_state(app)
}

/// A failed call: status plus `{error, message}`.
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "bad_request",
            message: message.into(),
        }
    }

    fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "unavailable",
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.code.to_string(),
            message: self.message,
        };
        (self.status, Json(body)).into_response()
    }
}

fn hash(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Hashes the configured key, if any.
pub fn key_hash(key: &str) -> Option<[u8; 32]> {
    (!key.is_empty()).then(|| hash(key.as_bytes()))
}

async fn require_key(
    AxumState(app): AxumState<Arc<App>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(expected) = &app.key_hash {
        let given = roomcast_service::bearer::bearer_token(request.headers());
        if !bool::from(hash(given.as_bytes()).ct_eq(expected)) {
            app.metrics.unauthorized.inc();
            return ApiError {
                status: StatusCode::UNAUTHORIZED,
                code: "unauthorized",
                message: "missing or wrong presence key".into(),
            }
            .into_response();
        }
    }
    next.run(request).await
}

fn check_node(node: &str) -> Result<(), ApiError> {
    let ok = !node.is_empty()
        && node.len() <= 128
        && node
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "node ids are 1 to 128 letters, digits, '-', '_' or '.'",
        ))
    }
}

fn check_name(what: &str, name: &str) -> Result<(), ApiError> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES || name.contains(['{', '}']) {
        return Err(ApiError::bad_request(format!(
            "{what} must be 1 to {MAX_NAME_BYTES} bytes without braces"
        )));
    }
    Ok(())
}

fn check_ttl(ttl_ms: u64) -> Result<(), ApiError> {
    if ttl_ms == 0 || ttl_ms > MAX_PARK_MS {
        return Err(ApiError::bad_request(format!(
            "ttl_ms must be between 1 and {MAX_PARK_MS}"
        )));
    }
    Ok(())
}

async fn sync(
    AxumState(app): AxumState<Arc<App>>,
    Path(node): Path<String>,
    Json(req): Json<SyncRequest>,
) -> Result<Json<SyncResponse>, ApiError> {
    check_node(&node)?;
    if req.incarnation.is_empty() {
        return Err(ApiError::bad_request("incarnation is required"));
    }
    let full = req.full;
    app.metrics.sync_requests.inc();
    let outcome = {
        let mut state = app.state.lock();
        let mut events = Vec::new();
        let outcome = state.sync(&node, req, app.default_lease, Instant::now(), &mut events);
        app.publish(events);
        outcome
    };
    app.metrics.ops_applied.add(outcome.applied as u64);
    app.metrics.ops_ignored.add(outcome.ignored as u64);
    if outcome.need_full {
        app.metrics.need_full.inc();
        tracing::info!(node, "unknown node or incarnation: asking for a full sync");
    } else if full {
        app.metrics.full_syncs.inc();
        if outcome.silent {
            app.metrics.silent_syncs.inc();
        }
        tracing::info!(
            node,
            ops = outcome.applied,
            silent = outcome.silent,
            restarted = outcome.replaced_incarnation,
            "full sync"
        );
    }
    Ok(Json(SyncResponse {
        presence: app.incarnation.clone(),
        need_full: outcome.need_full,
    }))
}

async fn members(
    AxumState(app): AxumState<Arc<App>>,
    Path(room): Path<String>,
) -> Result<Json<MembersResponse>, ApiError> {
    check_name("room", &room)?;
    let members = app.state.lock().members(&room);
    Ok(Json(MembersResponse { room, members }))
}

async fn lookup(
    AxumState(app): AxumState<Arc<App>>,
    Json(req): Json<LookupRequest>,
) -> Result<Json<LookupResponse>, ApiError> {
    app.metrics.lookup_requests.inc();
    if req.users.len() + req.sessions.len() > MAX_LOOKUP {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_LOOKUP} users and sessions per lookup"
        )));
    }
    let sessions = app.state.lock().lookup(&req.users, &req.sessions);
    Ok(Json(LookupResponse { sessions }))
}

async fn park(
    AxumState(app): AxumState<Arc<App>>,
    Path(session): Path<String>,
    Json(req): Json<ParkRequest>,
) -> Result<StatusCode, ApiError> {
    check_name("session", &session)?;
    check_ttl(req.ttl_ms)?;
    let user = listed_user(req.user.as_deref());
    if let Some(node) = &req.node {
        check_name("node", node)?;
    }
    match app
        .store
        .park(
            &session,
            &req.record,
            Duration::from_millis(req.ttl_ms),
            user,
            req.node.as_deref(),
        )
        .await
    {
        Ok(true) => {
            app.metrics.parked.inc();
            Ok(StatusCode::NO_CONTENT)
        }
        Ok(false) => {
            app.metrics.parks_superseded.inc();
            Err(ApiError {
                status: StatusCode::CONFLICT,
                code: "superseded",
                message: "the session resumed on another node since".into(),
            })
        }
        Err(e) => {
            app.metrics.redis_errors.inc();
            tracing::warn!(error = %e, "cannot park a session");
            Err(ApiError::unavailable(e.to_string()))
        }
    }
}

/// The user a park lists its session under: a name that could not be a
/// path segment of the end call (empty or over MAX_NAME_BYTES) still gets
/// its record parked, unlisted.
fn listed_user(user: Option<&str>) -> Option<&str> {
    user.filter(|u| !u.is_empty() && u.len() <= MAX_NAME_BYTES)
}

/// `POST /v1/park`: several parks in one request, each as by
/// `PUT /v1/sessions/{session}`; answers the sessions refused.
async fn park_many(
    AxumState(app): AxumState<Arc<App>>,
    Json(req): Json<ParkManyRequest>,
) -> Result<Json<ParkManyResponse>, ApiError> {
    app.metrics.park_requests.inc();
    if req.parks.len() > MAX_LOOKUP {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_LOOKUP} parks per request"
        )));
    }
    if let Some(node) = &req.node {
        check_name("node", node)?;
    }
    for park in &req.parks {
        check_name("session", &park.session)?;
        check_ttl(park.ttl_ms)?;
    }
    let parks: Vec<store::Park> = req
        .parks
        .iter()
        .map(|park| store::Park {
            session: &park.session,
            record: &park.record,
            ttl: Duration::from_millis(park.ttl_ms),
            user: listed_user(park.user.as_deref()),
        })
        .collect();
    match app.store.park_many(&parks, req.node.as_deref()).await {
        Ok(stored) => {
            let superseded: Vec<String> = parks
                .iter()
                .zip(&stored)
                .filter(|(_, stored)| !**stored)
                .map(|(park, _)| park.session.to_string())
                .collect();
            app.metrics
                .parked
                .add((parks.len() - superseded.len()) as u64);
            app.metrics.parks_superseded.add(superseded.len() as u64);
            Ok(Json(ParkManyResponse { superseded }))
        }
        Err(e) => {
            app.metrics.redis_errors.inc();
            tracing::warn!(error = %e, parks = parks.len(), "cannot park sessions");
            Err(ApiError::unavailable(e.to_string()))
        }
    }
}

/// `POST /v1/users/{user}/end`: the API ended a user; every record the
/// user left parked is replaced by the given one.
async fn end_user(
    AxumState(app): AxumState<Arc<App>>,
    Path(user): Path<String>,
    Json(req): Json<EndUserRequest>,
) -> Result<Json<EndUserResponse>, ApiError> {
    if user.is_empty() || user.len() > MAX_NAME_BYTES {
        return Err(ApiError::bad_request(format!(
            "user must be 1 to {MAX_NAME_BYTES} bytes"
        )));
    }
    check_ttl(req.ttl_ms)?;
    match app
        .store
        .end_user(&user, &req.record, Duration::from_millis(req.ttl_ms))
        .await
    {
        Ok(ended) => Ok(Json(EndUserResponse { ended })),
        Err(e) => {
            app.metrics.redis_errors.inc();
            tracing::warn!(error = %e, "cannot end a user's parked sessions");
            Err(ApiError::unavailable(e.to_string()))
        }
    }
}

async fn take(
    AxumState(app): AxumState<Arc<App>>,
    Path(session): Path<String>,
) -> Result<Response, ApiError> {
    check_name("session", &session)?;
    match app.store.take(&session).await {
        Ok(Some(record)) => {
            app.metrics.taken.inc();
            Ok(Json(TakeResponse { record }).into_response())
        }
        Ok(None) => {
            app.metrics.take_misses.inc();
            Ok(ApiError {
                status: StatusCode::NOT_FOUND,
                code: "not_found",
                message: "no parked record for this session".into(),
            }
            .into_response())
        }
        Err(e) => {
            app.metrics.redis_errors.inc();
            tracing::warn!(error = %e, "cannot take a session");
            Err(ApiError::unavailable(e.to_string()))
        }
    }
}

async fn take_many(
    AxumState(app): AxumState<Arc<App>>,
    Json(req): Json<TakeManyRequest>,
) -> Result<Json<TakeManyResponse>, ApiError> {
    app.metrics.take_requests.inc();
    let too_many = || ApiError::bad_request(format!("at most {MAX_LOOKUP} sessions per take"));
    if req.sessions.len() > MAX_LOOKUP
        || req.claims.len() > MAX_LOOKUP
        || req.claims_if_listed.len() > MAX_LOOKUP
    {
        return Err(too_many());
    }
    let if_listed = req.claims_if_listed.iter().map(|c| &c.session);
    for session in req.sessions.iter().chain(&req.claims).chain(if_listed) {
        check_name("session", session)?;
    }
    if let Some(token) = &req.token {
        check_name("token", token)?;
    }
    let claim = match (&req.node, req.claim_ms) {
        _ if req.claims.is_empty() && req.claims_if_listed.is_empty() => None,
        (Some(node), Some(claim_ms)) => {
            check_name("node", node)?;
            check_ttl(claim_ms)?;
            Some(store::Claim {
                node,
                ttl: Duration::from_millis(claim_ms),
            })
        }
        _ => {
            return Err(ApiError::bad_request(
                "claims need the claiming node and claim_ms",
            ))
        }
    };
    // Each session once: claimed when it is asked as a claim at all (the
    // gateway lists its claims under `sessions` too, for older services).
    let mut asks: BTreeMap<&str, bool> = req.sessions.iter().map(|s| (s.as_str(), false)).collect();
    for session in &req.claims {
        asks.insert(session, true);
    }
    // Claimed only where listed under its user: read from the listings
    // before the store is asked (see docs/presence.md for the races).
    let listed = (!req.claims_if_listed.is_empty()).then(|| {
        let state = app.state.lock();
        req.claims_if_listed
            .iter()
            .map(|c| {
                let owners = state.lookup(&[], std::slice::from_ref(&c.session));
                let nodes: Vec<String> = owners
                    .into_iter()
                    .filter(|o| o.user == c.user)
                    .map(|o| o.node)
                    .collect();
                (c.session.clone(), nodes)
            })
            .collect::<BTreeMap<String, Vec<String>>>()
    });
    if let Some(listed) = &listed {
        for c in &req.claims_if_listed {
            let claimed = asks.entry(c.session.as_str()).or_insert(false);
            *claimed |= listed
                .get(&c.session)
                .is_some_and(|nodes| !nodes.is_empty());
        }
    }
    if asks.len() > MAX_LOOKUP {
        return Err(too_many());
    }
    let asks: Vec<(&str, bool)> = asks.into_iter().collect();
    let asked = asks.len() as u64;
    let token = req.token.as_deref();
    match app
        .store
        .take_many(&asks, claim, req.keep.as_ref(), token)
        .await
    {
        Ok(found) => {
            app.metrics
                .claims
                .add(asks.iter().filter(|(_, claimed)| *claimed).count() as u64);
            let mut records = BTreeMap::new();
            let mut displaced = BTreeMap::new();
            // A repeat is counted as a repeat, not as taken or missed again.
            let (mut taken, mut repeated) = (0, 0);
            for ((session, _), took) in asks.into_iter().zip(found) {
                if took.repeated {
                    repeated += 1;
                } else if took.record.is_some() {
                    taken += 1;
                }
                if let Some(node) = took.displaced {
                    displaced.insert(session.to_string(), node);
                }
                if let Some(record) = took.record {
                    records.insert(session.to_string(), record);
                }
            }
            app.metrics.takes_repeated.add(repeated);
            app.metrics.taken.add(taken);
            app.metrics.take_misses.add(asked - repeated - taken);
            app.metrics.claims_displaced.add(displaced.len() as u64);
            Ok(Json(TakeManyResponse {
                records,
                displaced,
                listed,
            }))
        }
        Err(e) => {
            app.metrics.redis_errors.inc();
            tracing::warn!(error = %e, "cannot take sessions");
            Err(ApiError::unavailable(e.to_string()))
        }
    }
}

async fn readyz(AxumState(app): AxumState<Arc<App>>) -> Response {
    if app.redis.is_connected() {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "redis not connected").into_response()
    }
}

async fn metrics(AxumState(app): AxumState<Arc<App>>) -> Response {
    let gauges = Gauges {
        counts: app.state.lock().counts(),
        events_queued: app.events.len(),
        redis_connected: app.redis.is_connected(),
        webhooks: app
            .webhooks
            .as_ref()
            .map(Webhooks::stats)
            .unwrap_or_default(),
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(roomcast_service::metrics::CONTENT_TYPE),
    );
    (headers, app.metrics.render(&gauges)).into_response()
}

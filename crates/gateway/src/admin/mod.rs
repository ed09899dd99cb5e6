//! The admin page under `/admin/`, off unless `admin.enabled`: plain HTML,
//! CSS and JavaScript (`clients/admin`), embedded in the binary like the
//! demo, showing the cluster's nodes live, a room's members and last
//! messages, a publish console and disconnects.
//!
//! Its backend is the HTTP API itself: [`crate::api::routes`] mounted a
//! second time under `/admin/api`, behind the admin session cookie instead
//! of the API key ([`guard`]). So every action goes through the same
//! handlers and node operations as a backend's call, and the browser never
//! holds the API key. Logging in takes `admin.key`, the page's own secret
//! (`docs/security.md`, "The admin page").

pub mod guard;
pub mod session;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::response::Redirect;
use axum::routing::{get, post};
use axum::Router;

use crate::demo::{asset, BASE_CSS, CSS, HTML, JAVASCRIPT};
use crate::node::Node;
use guard::Admin;

const INDEX_HTML: &str = include_str!("../../../../clients/admin/index.html");
const ADMIN_JS: &str = include_str!("../../../../clients/admin/admin.js");
const CHARTS_JS: &str = include_str!("../../../../clients/admin/charts.js");
const ADMIN_CSS: &str = include_str!("../../../../clients/admin/admin.css");

/// Largest login body: a key and some JSON around it.
const LOGIN_BODY_LIMIT: usize = 4 * 1024;

/// The admin routes with their full paths, to be merged into the node's
/// router; none at all (so `/admin/…` is 404) unless `admin.enabled`.
pub fn router(node: &Arc<Node>) -> Router<Arc<Node>> {
    if !node.config.admin.enabled {
        return Router::new();
    }
    let admin = Arc::new(Admin::new(&node.config.admin, node.id.clone()));
    let api = crate::api::routes(node).layer(middleware::from_fn_with_state(
        admin.clone(),
        guard::require_session,
    ));
    let login = Router::new()
        .route("/admin/login", post(guard::login))
        .route("/admin/logout", post(guard::logout))
        .route("/admin/session", get(guard::session))
        .layer(DefaultBodyLimit::max(LOGIN_BODY_LIMIT))
        .with_state(admin);
    let index = || async { asset(HTML, INDEX_HTML) };
    Router::new()
        .route("/admin", get(|| async { Redirect::permanent("/admin/") }))
        .route("/admin/", get(index))
        .route("/admin/index.html", get(index))
        .route(
            "/admin/admin.js",
            get(|| async { asset(JAVASCRIPT, ADMIN_JS) }),
        )
        .route(
            "/admin/charts.js",
            get(|| async { asset(JAVASCRIPT, CHARTS_JS) }),
        )
        .route("/admin/admin.css", get(|| async { asset(CSS, ADMIN_CSS) }))
        .route("/admin/base.css", get(|| async { asset(CSS, BASE_CSS) }))
        .merge(login)
        .nest("/admin/api", api)
        .layer(middleware::from_fn(guard::same_origin))
        .layer(middleware::from_fn(guard::security_headers))
}

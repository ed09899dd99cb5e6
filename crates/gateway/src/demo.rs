//! The demo chat page under `/demo/`: plain HTML, CSS and JavaScript using the
//! JavaScript client (`clients/js/roomcast.js`), embedded in the binary at
//! compile time so `make run` serves it with nothing else installed. The page
//! connects back to this node's `/ws`.

use std::sync::Arc;

use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

use crate::node::Node;

const INDEX_HTML: &str = include_str!("../../../clients/demo/index.html");
const APP_JS: &str = include_str!("../../../clients/demo/app.js");
const STYLE_CSS: &str = include_str!("../../../clients/demo/style.css");
/// What the demo and the admin page share (top bar, cards).
pub const BASE_CSS: &str = include_str!("../../../clients/common/base.css");
const ROOMCAST_JS: &str = include_str!("../../../clients/js/roomcast.js");

pub const HTML: &str = "text/html; charset=utf-8";
pub const JAVASCRIPT: &str = "text/javascript; charset=utf-8";
pub const CSS: &str = "text/css; charset=utf-8";

/// The routes, with their full paths (to be merged into the node's router:
/// a router nested at `/demo` cannot serve `/demo/`). `/demo` redirects to
/// `/demo/` so the page's relative links resolve.
pub fn router() -> Router<Arc<Node>> {
    let index = || async { asset(HTML, INDEX_HTML) };
    Router::new()
        .route("/demo", get(|| async { Redirect::permanent("/demo/") }))
        .route("/demo/", get(index))
        .route("/demo/index.html", get(index))
        .route("/demo/app.js", get(|| async { asset(JAVASCRIPT, APP_JS) }))
        .route("/demo/style.css", get(|| async { asset(CSS, STYLE_CSS) }))
        .route("/demo/base.css", get(|| async { asset(CSS, BASE_CSS) }))
        .route(
            "/demo/roomcast.js",
            get(|| async { asset(JAVASCRIPT, ROOMCAST_JS) }),
        )
}

/// A file of the page, with its type; the admin page serves its own the same way.
pub fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // Small files that change with the binary: always revalidate.
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

//! Calls from roomcast to the application's backend.
//!
//! - [`http::Backend`]: one HTTP client for every call (JSON POSTs with a
//!   deadline, `http://` or `https://`, connections pooled and closed when
//!   idle).
//! - [`sign`]: the HMAC-SHA256 signature webhooks carry, and its check.
//! - [`webhook`]: signed, batched event deliveries with retries.
//!
//! The request and response shapes are documented in `docs/hooks.md`.

pub mod http;
pub mod sign;
pub mod webhook;

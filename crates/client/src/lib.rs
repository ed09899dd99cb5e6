//! The Rust client of roomcast.
//!
//! A [`Client`] holds one logical session with a roomcast cluster across as
//! many WebSocket connections as it takes. It connects to one of several node
//! URLs, says `hello` (with a token, or a token provider for refreshes), and
//! from then on keeps the session alive by itself:
//!
//! - **Reconnect** with exponential backoff and full jitter ([`Backoff`]),
//!   rotating through the URLs; a node's `reconnect` notice (before close
//!   1012) sets the delay instead; a refused token (4401) stops the client
//!   rather than retrying for ever.
//! - **Resume**: after a reconnect, `hello` carries the session's resume
//!   token and, per room, the last offset received; when the server cannot
//!   resume, the client re-joins every room with `since`. A room whose missed
//!   messages could not be replayed is reported ([`Event::RecoveryFailed`]).
//! - **De-duplicate** by offset per room: no message at or below the last
//!   delivered offset of its room and epoch reaches the application twice.
//! - **Heartbeat**: a connection silent for two ping intervals (announced in
//!   `welcome`) plus some slack is treated as dead and replaced.
//!
//! Commands ([`Client::join`], [`Client::publish`], …) return futures that
//! resolve to the reply matched by `id`, or to an [`Error`] (a server error
//! carries its [`ErrorCode`]). Everything else arrives on [`Events`].
//! Commands in flight when a connection drops fail with
//! [`Error::Disconnected`] and are not re-sent, except publishes:
//!
//! - **Idempotent publish**: every publish carries a key (a fresh random one,
//!   or [`PublishOptions::key`]); one in flight when the connection drops is
//!   sent again with the same key once the session is back, and one answered
//!   `unavailable` is retried with backoff. The node stores a key once per
//!   room, so a retry never duplicates ([`Published::duplicate`]).
//! - **Token refresh**: with a token provider and a token that expires
//!   (`welcome.token_expires_at`), the client asks the provider for a new
//!   token before expiry and hands it to the node with `refresh`
//!   ([`Event::TokenRefreshed`]); rooms the new token no longer allows are
//!   forgotten ([`Event::Left`]). If refreshing fails, the node closes with
//!   4401 at expiry and the client reconnects with a fresh token. A node
//!   with a refresh proxy may extend the token by itself (a `refreshed`
//!   without `id`): [`Client::token_expires_at`] moves, the client's own
//!   next refresh is planned from the new expiry, and
//!   [`Event::TokenRefreshed`] says `server: true`.
//! - **Server-side subscriptions**: a token's `subs` claim (or the connect
//!   proxy's) makes the node join the connection to rooms by itself, each
//!   announced by a `joined` without `id` right after `welcome`
//!   ([`Event::Joined`]). The client keeps them as it keeps the rooms it
//!   joined: position, de-duplication, listed in the resume, so a resumed
//!   session gets what it missed. A fresh session (the old one could not be
//!   resumed) is joined to them again by the node, which replays nothing:
//!   a gap since the client's position is reported as
//!   [`Event::RecoveryFailed`]. [`Client::leave`] leaves such a room like any
//!   other; when the node joins a later connection to it again, the client
//!   leaves it again, until the application joins it (the node allows
//!   joining a room of the token's `subs` again).
//!
//! Only `ws://` is supported for now: the client is built without TLS (yawc
//! without its `tls` feature). Put a TLS-terminating proxy in front of the
//! nodes, or use `ws://` inside the cluster.
//!
//! ```no_run
//! use roomcast_client::{Client, Codec, Event};
//! use serde_json::json;
//!
//! # async fn demo() -> Result<(), roomcast_client::Error> {
//! let (client, mut events) = Client::builder()
//!     .urls(["ws://10.0.0.1:8080/ws", "ws://10.0.0.2:8080/ws"])
//!     .codec(Codec::MsgPack)
//!     .token_provider(|| async { Ok("<jwt>".to_string()) })
//!     .connect()
//!     .await?;
//! client.join("lobby").await?;
//! let offset = client.publish("lobby", json!({"text": "hi"})).await?;
//! while let Some(event) = events.recv().await {
//!     if let Event::Message(m) = event {
//!         println!("{} #{}: {}", m.room, m.offset, m.data);
//!     }
//! }
//! # let _ = offset;
//! # Ok(())
//! # }
//! ```

mod backoff;
mod client;
mod config;
mod connection;
mod dedup;
mod driver;
mod error;
mod events;
mod pending;
mod rooms;
mod watchdog;

pub use backoff::Backoff;
pub use client::{new_publish_key, Client, JoinOptions, Joined, PublishOptions, Published};
pub use config::{ClientBuilder, TokenFuture};
pub use error::Error;
pub use events::{
    ConnectionState, DirectMessage, DisconnectCause, Event, Events, RoomMessage, SessionInfo,
};

/// The protocol crate, for frame types beyond the ones re-exported here.
pub use roomcast_protocol as protocol;
pub use roomcast_protocol::{
    ClientFrame, Codec, Data, ErrorCode, Member, ReconnectReason, ServerFrame, Since, Target,
};

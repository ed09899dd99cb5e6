//! The gateway's side of the presence service, in a crate of its own so a
//! gateway links the client and not the service.
//!
//! - [`api`]: the JSON types of the service's HTTP API, shared by the
//!   service (which re-exports them) and this client, so the two cannot
//!   drift;
//! - [`client`]: [`client::PresenceClient`], which reports a node's
//!   connections as a replayable stream of ops and asks the service
//!   (presence lists, owners, parked sessions) in batches.

pub mod api;
pub mod client;

//! Sessions that outlive their connection, for resume.
//!
//! When a connection ends its session is parked for `session.ttl_ms`; a
//! `hello` with `resume` takes it back if the resume token matches:
//! - [`token`]: resume tokens, signed and checked;
//! - [`parked`]: where parked sessions wait (this node, or the presence
//!   service's store in Redis, reached directly while the service is down);
//! - [`lifecycle`]: take, hold, park and end, and the order that keeps a
//!   resume racing a teardown safe.

pub mod lifecycle;
pub mod parked;
pub mod token;

pub use lifecycle::{Lifecycle, Resumed};
pub use parked::{ended_record, ParkedSessions, Resumable, Taken};
pub use token::ResumeSigner;

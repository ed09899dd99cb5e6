//! Parked sessions: the records gateways leave behind for a later resume.
//! The store itself (its scripts, keys and their once-only take) lives in
//! [`roomcast_service::parked`], shared with the gateways, which run it
//! themselves on their own Redis connection when no presence replica
//! answers.

pub use roomcast_service::parked::*;

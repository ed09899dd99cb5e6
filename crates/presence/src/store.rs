//! Parked sessions: the records gateways leave behind for a later resume
//! (on connection loss, and at drain for the handoff), kept in Redis so they
//! survive a presence restart.
//!
//! One string key per session, `rc:{sess:<id>}`, written with
//! `SET … PX ttl` and read with `GETDEL`, so a take is atomic: of two nodes
//! racing to resume the same session, exactly one gets the record. The hash
//! tag gives each session its own slot in a Redis Cluster.

use std::time::Duration;

use fred::prelude::{Expiration, KeysInterface};
use roomcast_protocol::Data;

use crate::redis::Redis;

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] fred::prelude::Error),
    #[error("stored record is not JSON: {0}")]
    Corrupt(String),
}

#[derive(Clone)]
pub struct SessionStore {
    redis: Redis,
}

impl SessionStore {
    pub fn new(redis: Redis) -> SessionStore {
        SessionStore { redis }
    }

    /// The Redis key of a session's record.
    pub fn key(session: &str) -> String {
        format!("rc:{{sess:{session}}}")
    }

    /// Stores (or replaces) the record of `session` for `ttl`.
    pub async fn park(
        &self,
        session: &str,
        record: &Data,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let text = serde_json::to_string(record).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1);
        let () = self
            .redis
            .client
            .set(
                Self::key(session),
                text,
                Some(Expiration::PX(ttl_ms)),
                None,
                false,
            )
            .await?;
        Ok(())
    }

    /// Takes the records of several sessions in one pipeline (each key in
    /// its own slot, so each `GETDEL` stays atomic); `None` where nothing
    /// (or nothing readable) was parked, in the order asked.
    pub async fn take_many(&self, sessions: &[String]) -> Result<Vec<Option<Data>>, StoreError> {
        if sessions.is_empty() {
            return Ok(Vec::new());
        }
        let pipeline = self.redis.client.pipeline();
        for session in sessions {
            let () = pipeline.getdel(Self::key(session)).await?;
        }
        pipeline
            .try_all::<Option<String>>()
            .await
            .into_iter()
            .zip(sessions)
            .map(|(text, session)| {
                // A record that is not JSON is that session's loss alone.
                Ok(text?.and_then(|t| match serde_json::from_str(&t) {
                    Ok(record) => Some(record),
                    Err(e) => {
                        tracing::warn!(session, error = %e, "parked record is not JSON; dropped");
                        None
                    }
                }))
            })
            .collect()
    }

    /// Gets and deletes the record of `session`, atomically.
    pub async fn take(&self, session: &str) -> Result<Option<Data>, StoreError> {
        let text: Option<String> = self.redis.client.getdel(Self::key(session)).await?;
        text.map(|t| serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(e.to_string())))
            .transpose()
    }
}

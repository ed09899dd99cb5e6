//! Parked sessions: the records gateways leave behind for a later resume
//! (on connection loss, and at drain for the handoff), kept in Redis so they
//! survive a presence restart.
//!
//! One string key per session, `rc:{sess:<id>}`, written with
//! `SET … PX ttl` and read with `GETDEL`, so a take is atomic: of two nodes
//! racing to resume the same session, exactly one gets the record. The hash
//! tag gives each session its own slot in a Redis Cluster.
//!
//! A record parked with its user is also listed in that user's set,
//! `rc:{user:<escaped user>}`, so that the API's disconnect of a user can
//! end the sessions the user left parked. The set lives as long as the
//! last record parked in it; a take leaves its member behind (the set
//! is only read by [`SessionStore::end_user`], which finds the record gone
//! and drops the member).

use std::time::Duration;

use fred::prelude::{Expiration, KeysInterface, SetsInterface};
use fred::types::SetOptions;
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

/// A record as stored, and its TTL as Redis takes it.
fn encode(record: &Data, ttl: Duration) -> Result<(String, i64), StoreError> {
    let text = serde_json::to_string(record).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok((
        text,
        i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1),
    ))
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

    /// The Redis key of the set of a user's parked sessions. `%`, `{` and
    /// `}` are escaped, so the user's name is its hash tag whatever it
    /// holds, and two names never share a key.
    pub fn user_key(user: &str) -> String {
        let mut escaped = String::with_capacity(user.len());
        for c in user.chars() {
            match c {
                '%' => escaped.push_str("%25"),
                '{' => escaped.push_str("%7B"),
                '}' => escaped.push_str("%7D"),
                c => escaped.push(c),
            }
        }
        format!("rc:{{user:{escaped}}}")
    }

    /// Stores (or replaces) the record of `session` for `ttl`, listed under
    /// `user` when one is given.
    pub async fn park(
        &self,
        session: &str,
        record: &Data,
        ttl: Duration,
        user: Option<&str>,
    ) -> Result<(), StoreError> {
        let (text, ttl_ms) = encode(record, ttl)?;
        // One pipeline: the record and, with a user, its listing and the
        // listing's expiry. An end of the user that runs before the listing
        // misses a session whose park had not landed yet; the gateway's
        // owning node ends the user again after its parks (see
        // docs/decisions.md).
        let pipeline = self.redis.client.pipeline();
        let () = pipeline
            .set(
                Self::key(session),
                text,
                Some(Expiration::PX(ttl_ms)),
                None,
                false,
            )
            .await?;
        if let Some(user) = user {
            let user_key = Self::user_key(user);
            let () = pipeline.sadd(&user_key, session).await?;
            // The set lives as long as the last record parked in it: the
            // gateways park with one TTL (`session.ttl_ms`), so that is
            // also the longest.
            let () = pipeline.pexpire(&user_key, ttl_ms, None).await?;
        }
        for reply in pipeline.try_all::<fred::types::Value>().await {
            reply?;
        }
        Ok(())
    }

    /// Replaces the parked record of every session listed under `user`
    /// with `record`, kept for `ttl`, and forgets the listing; a session
    /// whose record is gone (taken or expired) is left without one.
    /// Returns how many records were replaced.
    pub async fn end_user(
        &self,
        user: &str,
        record: &Data,
        ttl: Duration,
    ) -> Result<u64, StoreError> {
        let (text, ttl_ms) = encode(record, ttl)?;
        let user_key = Self::user_key(user);
        let sessions: Vec<String> = self.redis.client.smembers(&user_key).await?;
        if sessions.is_empty() {
            return Ok(0);
        }
        let pipeline = self.redis.client.pipeline();
        for session in &sessions {
            // XX: only where a record is parked now.
            let () = pipeline
                .set(
                    Self::key(session),
                    text.as_str(),
                    Some(Expiration::PX(ttl_ms)),
                    Some(SetOptions::XX),
                    false,
                )
                .await?;
        }
        let mut ended = 0;
        for reply in pipeline.try_all::<Option<String>>().await {
            if reply?.is_some() {
                ended += 1;
            }
        }
        // Only the members read: a session parked meanwhile stays listed.
        let () = self.redis.client.srem(&user_key, sessions).await?;
        Ok(ended)
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

//! Parked sessions: the records gateways leave behind for a later resume
//! (on connection loss, and at drain for the handoff), kept in Redis so they
//! survive a presence restart.
//!
//! One implementation for both sides: the presence service runs it for the
//! gateways, and a gateway runs it itself on its own Redis connection when
//! no presence replica answers (docs/presence.md, "With presence down").
//! Same scripts, same keys: a take is once-only whichever process runs it,
//! and a record parked by either is taken by either.
//!
//! One string key per session, `rc:{sess:<id>}`, written with
//! `SET … PX ttl` and taken by a script that reads and deletes it (or
//! `GETDEL`), so a take is atomic: of two nodes
//! racing to resume the same session, exactly one gets the record. The hash
//! tag gives each session its own slot in a Redis Cluster.
//!
//! A record parked with its user is also listed in that user's set,
//! `rc:{user:<escaped user>}`, so that the API's disconnect of a user can
//! end the sessions the user left parked. The set lives as long as the
//! last record parked in it; a take leaves its member behind (the set
//! is only read by [`ParkedRecords::end_user`], which finds the record gone
//! and drops the member).
//!
//! A node that resumes a session on the token's word (the service still
//! lists it on another node) claims it: `rc:{sess:<id>}:held`, in the
//! record's slot, names that node for a while, and a park of the session
//! by any other node is refused. The old node's connection of it may end
//! after the resume (a drain parks a session before it unlists it), and a
//! record parked then would let the session resume a second time, from
//! that copy, while it is live on the new node. The holder's own park
//! ends the claim. A claim replacing another node's names that node, which
//! resumed the session before and may hold it still: the new holder tells
//! it the session moved.
//!
//! A take may name a record to keep (the gateway's mark of a session the
//! API ended): one equal to it is read by the take's script and left in
//! place, so it refuses every resume until it expires, not the first one
//! alone.
//!
//! A take may carry a token: its answer is then kept for a while,
//! `rc:{sess:<id>}:took` in the record's slot, and the same token asking
//! again gets that answer back. A gateway whose take went unanswered sends
//! it once more, and so gets the record the first request took.

use std::time::Duration;

use fred::prelude::{Client, ClientLike, Expiration, KeysInterface, SetsInterface};
use fred::types::{ClusterHash, CustomCommand, FromValue, SetOptions, Value};

/// A parked record: any JSON value (the gateway's session identity, or its
/// mark of a session the API ended).
pub type Data = serde_json::Value;

/// Parks a record unless another node holds a claim ([`park.lua`](park.lua)).
const PARK_LUA: &str = include_str!("park.lua");

/// One session's take, its claim and its kept answer ([`take.lua`](take.lua)).
const TAKE_LUA: &str = include_str!("take.lua");

/// How long the answer to a take made with a token is kept for a repeat
/// of it: well past a gateway's query timeout (1 s) and its one retry.
pub const TAKE_ANSWER_TTL: Duration = Duration::from_secs(30);

/// One record of [`ParkedRecords::park_many`].
#[derive(Debug, Clone, Copy)]
pub struct Park<'a> {
    pub session: &'a str,
    pub record: &'a Data,
    pub ttl: Duration,
    /// The session's user, to list it under.
    pub user: Option<&'a str>,
}

/// A claim that comes with a take ([`ParkedRecords::take_many`]).
#[derive(Debug, Clone, Copy)]
pub struct Claim<'a> {
    /// The node resuming the session.
    pub node: &'a str,
    pub ttl: Duration,
}

/// What [`ParkedRecords::take_many`] found for one session.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Took {
    /// The record parked (taken, or read and kept), if any.
    pub record: Option<Data>,
    /// For a claimed session, the other node whose claim this one
    /// replaced: it resumed the session earlier and may still hold it.
    pub displaced: Option<String>,
    /// The answer kept from an earlier take with the same token (a retry).
    pub repeated: bool,
}

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
    Ok((text, ttl_ms(ttl)))
}

/// A TTL as Redis takes it: whole milliseconds, at least one.
fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1)
}

#[derive(Clone)]
pub struct ParkedRecords {
    client: Client,
}

impl ParkedRecords {
    /// The records on `client`'s Redis (a cluster's, too: every command
    /// names keys of one slot).
    pub fn new(client: Client) -> ParkedRecords {
        ParkedRecords { client }
    }

    /// The Redis key of a session's record.
    pub fn key(session: &str) -> String {
        format!("rc:{{sess:{session}}}")
    }

    /// The Redis key of the claim on a session, in its record's slot.
    pub fn claim_key(session: &str) -> String {
        format!("rc:{{sess:{session}}}:held")
    }

    /// The Redis key of the answer kept from a take with a token, in the
    /// record's slot.
    pub fn answer_key(session: &str) -> String {
        format!("rc:{{sess:{session}}}:took")
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
    /// `user` when one is given. Parked by `node`, the record is refused
    /// (`Ok(false)`) while another node holds a claim on the session;
    /// without one it is stored whatever the claims.
    pub async fn park(
        &self,
        session: &str,
        record: &Data,
        ttl: Duration,
        user: Option<&str>,
        node: Option<&str>,
    ) -> Result<bool, StoreError> {
        let park = Park {
            session,
            record,
            ttl,
            user,
        };
        Ok(self.park_many(&[park], node).await?[0])
    }

    /// Parks several records, as [`Self::park`] does each, in one pipeline;
    /// whether each was stored, in the order given.
    pub async fn park_many(
        &self,
        parks: &[Park<'_>],
        node: Option<&str>,
    ) -> Result<Vec<bool>, StoreError> {
        if parks.is_empty() {
            return Ok(Vec::new());
        }
        // Per park: the record and, with a user, its listing and the
        // listing's expiry. An end of the user that runs before the listing
        // misses a session whose park had not landed yet; the gateway's
        // owning node ends the user again after its parks (see
        // docs/decisions.md). A refused park still lists the session under
        // its user: the listing names sessions to look for, and an end of
        // the user skips one with no record.
        let pipeline = self.client.pipeline();
        let mut firsts = Vec::with_capacity(parks.len());
        let mut queued = 0;
        for park in parks {
            let (text, ttl_ms) = encode(park.record, park.ttl)?;
            firsts.push(queued);
            match node {
                // EVAL as a plain command: fred sends its own EVAL alone on
                // the connection, waiting for the answer before anything
                // else goes; this one is pipelined like the SET it replaces.
                Some(node) => {
                    let eval = CustomCommand::new_static("EVAL", ClusterHash::Offset(2), false);
                    let args: Vec<Value> = vec![
                        PARK_LUA.into(),
                        2i64.into(),
                        Self::key(park.session).into(),
                        Self::claim_key(park.session).into(),
                        text.into(),
                        ttl_ms.into(),
                        node.into(),
                    ];
                    let () = pipeline.custom(eval, args).await?;
                }
                None => {
                    let () = pipeline
                        .set(
                            Self::key(park.session),
                            text,
                            Some(Expiration::PX(ttl_ms)),
                            None,
                            false,
                        )
                        .await?;
                }
            }
            queued += 1;
            if let Some(user) = park.user {
                let user_key = Self::user_key(user);
                let () = pipeline.sadd(&user_key, park.session).await?;
                // The set lives as long as the last record parked in it:
                // the gateways park with one TTL (`session.ttl_ms`), so
                // that is also the longest.
                let () = pipeline.pexpire(&user_key, ttl_ms, None).await?;
                queued += 2;
            }
        }
        let replies = pipeline
            .try_all::<Value>()
            .await
            .into_iter()
            .collect::<Result<Vec<Value>, _>>()?;
        Ok(firsts
            .into_iter()
            .map(|first| !matches!(replies.get(first), Some(Value::Integer(0))))
            .collect())
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
        let sessions: Vec<String> = self.client.smembers(&user_key).await?;
        if sessions.is_empty() {
            return Ok(0);
        }
        let pipeline = self.client.pipeline();
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
        let () = self.client.srem(&user_key, sessions).await?;
        Ok(ended)
    }

    /// Takes the records of several sessions in one pipeline of
    /// [`TAKE_LUA`] (each session's keys in its own slot, so each take
    /// stays atomic), in the order asked; no record where nothing (or
    /// nothing readable) was parked. A record equal to `keep` is read and
    /// left in place. A session asked with `true` is claimed for `claim`'s
    /// node first, in the same script, so a park racing the take either
    /// lands before it (and is taken) or is refused; the claim it
    /// replaces, if another node's, is answered as displaced. With a `token`, each session's
    /// answer is also kept for [`TAKE_ANSWER_TTL`], and a take with the
    /// same token gets it again instead of asking anew ([`Took::repeated`]).
    pub async fn take_many(
        &self,
        sessions: &[(&str, bool)],
        claim: Option<Claim<'_>>,
        keep: Option<&Data>,
        token: Option<&str>,
    ) -> Result<Vec<Took>, StoreError> {
        if sessions.is_empty() {
            return Ok(Vec::new());
        }
        let keep = keep
            .map(|k| serde_json::to_string(k).map_err(|e| StoreError::Corrupt(e.to_string())))
            .transpose()?;
        let pipeline = self.client.pipeline();
        for (session, claims) in sessions {
            let claim = claim.filter(|_| *claims);
            // EVAL as a plain command, pipelined (see park_many).
            let eval = CustomCommand::new_static("EVAL", ClusterHash::Offset(2), false);
            let args: Vec<Value> = vec![
                TAKE_LUA.into(),
                3i64.into(),
                Self::key(session).into(),
                Self::claim_key(session).into(),
                Self::answer_key(session).into(),
                token.unwrap_or("").into(),
                claim.map_or("", |c| c.node).into(),
                claim.map_or(1, |c| ttl_ms(c.ttl)).into(),
                keep.as_deref().unwrap_or("").into(),
                ttl_ms(TAKE_ANSWER_TTL).into(),
            ];
            let () = pipeline.custom(eval, args).await?;
        }
        let mut found = Vec::with_capacity(sessions.len());
        for ((session, _), reply) in sessions.iter().zip(pipeline.try_all::<Value>().await) {
            let Value::Array(parts) = reply? else {
                return Err(StoreError::Corrupt("take script answered no array".into()));
            };
            let mut parts = parts.into_iter();
            let mut next = || parts.next().unwrap_or(Value::Null);
            let displaced = Option::<String>::from_value(next())?;
            // A record that is not JSON is that session's loss alone.
            let record = Option::<String>::from_value(next())?.and_then(|t| {
                serde_json::from_str(&t)
                    .map_err(|e| {
                        tracing::warn!(session, error = %e, "parked record is not JSON; dropped")
                    })
                    .ok()
            });
            let repeated = Option::<i64>::from_value(next())? == Some(1);
            found.push(Took {
                record,
                displaced,
                repeated,
            });
        }
        Ok(found)
    }

    /// Gets and deletes the record of `session`, atomically.
    pub async fn take(&self, session: &str) -> Result<Option<Data>, StoreError> {
        let text: Option<String> = self.client.getdel(Self::key(session)).await?;
        text.map(|t| serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(e.to_string())))
            .transpose()
    }
}

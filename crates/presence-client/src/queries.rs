//! The queries to the presence service (`members`, `lookup`, `park`, `take`
//! and claims, `mark`, `end_user`): plain requests with a short timeout, at
//! most [`MAX_QUERIES`] in flight. Lookups, parks and takes asked while
//! others are in flight share a request ([`Batches`]).
//!
//! A take that gets no answer is sent once more with the same token, which
//! the service answers as it did the first time: the first may have taken
//! the records before its answer was lost.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use parking_lot::Mutex;
use roomcast_protocol::Data;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::api::{
    EndUserRequest, EndUserResponse, ListedClaim, LookupRequest, LookupResponse, Member,
    MembersResponse, Owner, ParkItem, ParkManyRequest, ParkManyResponse, ParkRequest,
    TakeManyRequest, TakeManyResponse, TakeResponse,
};
use crate::batch::{Batches, Waiter};
use crate::http::{decode, expect_ok, segment, PresenceError, Transport};
use crate::options::ClientOptions;

/// Most queries (`members`, `lookup`, `park`, `take`) in flight at once;
/// the others wait their turn, within their timeout. A reconnect storm asks
/// for thousands at once: unbounded, each beyond the pool's idle
/// connections would open a connection of its own.
pub(crate) const MAX_QUERIES: usize = 32;

/// What a claim found (`PresenceClient::claim`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claimed {
    /// The record parked, taken as by `PresenceClient::take`.
    pub record: Option<Data>,
    /// The other node whose claim on the session this one replaced: it
    /// resumed the session on the token's word before, and may still hold
    /// it. `None` from services older than that answer.
    pub displaced: Option<String>,
    /// Asked with `PresenceClient::take_or_claim`: the nodes listing the
    /// session under its user (the claim was made if any). `None` when
    /// the service is older than that question, and the answer is a plain
    /// take's.
    pub listed: Option<Vec<String>>,
}

/// What became of a park (`PresenceClient::park`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parked {
    Stored,
    /// Refused: another node claimed the session since (it resumed there).
    Superseded,
}

/// The queries' side of the client: the permits, the waiting batches, and
/// what their sending tasks share.
pub(crate) struct Queries {
    transport: Transport,
    options: ClientOptions,
    /// Set when the client stops: an unanswered take is not asked again.
    stopped: AtomicBool,
    /// Permits for queries in flight ([`MAX_QUERIES`]); syncs do not wait here.
    permits: tokio::sync::Semaphore,
    lookups: Mutex<Batches<LookupWaiter>>,
    takes: Mutex<Batches<TakeWaiter>>,
    parks: Mutex<Batches<ParkWaiter>>,
}

struct LookupWaiter {
    users: Vec<String>,
    sessions: Vec<String>,
    reply: oneshot::Sender<Result<Vec<Owner>, PresenceError>>,
}

impl Waiter for LookupWaiter {
    fn names(&self) -> usize {
        self.users.len() + self.sessions.len()
    }

    fn abandoned(&self) -> bool {
        self.reply.is_closed()
    }
}

struct ParkWaiter {
    item: ParkItem,
    /// Its share of a request: 1, plus 1 per KiB of record.
    weight: usize,
    reply: oneshot::Sender<Result<Parked, PresenceError>>,
}

impl Waiter for ParkWaiter {
    fn names(&self) -> usize {
        self.weight
    }

    fn abandoned(&self) -> bool {
        self.reply.is_closed()
    }
}

struct TakeWaiter {
    session: String,
    /// Claim the session for this node, for so long, before taking it.
    claim: Option<Duration>,
    /// With `claim`: only if the service lists it under this user.
    if_listed_by: Option<String>,
    reply: oneshot::Sender<Result<Claimed, PresenceError>>,
}

impl Waiter for TakeWaiter {
    fn names(&self) -> usize {
        1
    }

    fn abandoned(&self) -> bool {
        self.reply.is_closed()
    }
}

impl Queries {
    pub(crate) fn new(transport: Transport, options: ClientOptions) -> Queries {
        Queries {
            transport,
            options,
            stopped: AtomicBool::new(false),
            permits: tokio::sync::Semaphore::new(MAX_QUERIES),
            lookups: Mutex::default(),
            takes: Mutex::default(),
            parks: Mutex::default(),
        }
    }

    /// The client stopped.
    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
    }

    /// Members of a room, cluster-wide.
    pub(crate) async fn members(&self, room: &str) -> Result<Vec<Member>, PresenceError> {
        let path = format!("/v1/rooms/{}/members", segment(room));
        let (status, body) = self
            .query(Method::GET, &path, None::<&()>, self.options.timeout)
            .await?;
        expect_ok(status, &body)?;
        Ok(decode::<MembersResponse>(&body)?.members)
    }

    /// Which nodes hold the given users' sessions and the given sessions,
    /// in a request shared with the lookups asked meanwhile.
    pub(crate) async fn lookup(
        self: &Arc<Self>,
        users: &[String],
        sessions: &[String],
    ) -> Result<Vec<Owner>, PresenceError> {
        let (reply, answer) = oneshot::channel();
        let start_runner = self.lookups.lock().push(LookupWaiter {
            users: users.to_vec(),
            sessions: sessions.to_vec(),
            reply,
        });
        if start_runner {
            tokio::spawn(self.clone().run_lookups());
        }
        self.answer(answer).await
    }

    /// Parks a session's record, in a request shared with the parks asked
    /// meanwhile.
    pub(crate) async fn park(
        self: &Arc<Self>,
        session: &str,
        record: Data,
        ttl: Duration,
        user: Option<&str>,
    ) -> Result<Parked, PresenceError> {
        let item = ParkItem {
            session: session.to_string(),
            record,
            ttl_ms: wire_ms(ttl),
            user: user.map(str::to_string),
        };
        // Weighed by size, so that a request carries about BATCH_NAMES KiB
        // of records at most (or one larger record alone).
        let weight = 1 + serde_json::to_vec(&item.record).map_or(0, |v| v.len()) / 1024;
        let (reply, answer) = oneshot::channel();
        let start_runner = self.parks.lock().push(ParkWaiter {
            item,
            weight,
            reply,
        });
        if start_runner {
            tokio::spawn(self.clone().run_parks());
        }
        self.answer(answer).await
    }

    /// Stores `record` for a session whatever node holds it, for `ttl`.
    pub(crate) async fn mark(
        &self,
        session: &str,
        record: Data,
        ttl: Duration,
    ) -> Result<(), PresenceError> {
        let body = ParkRequest {
            record,
            ttl_ms: wire_ms(ttl),
            user: None,
            node: None,
        };
        self.put_record(session, &body).await
    }

    /// Replaces the record of every session `user` left parked; how many.
    pub(crate) async fn end_user(
        &self,
        user: &str,
        record: Data,
        ttl: Duration,
    ) -> Result<u64, PresenceError> {
        let body = EndUserRequest {
            record,
            ttl_ms: wire_ms(ttl),
        };
        let path = format!("/v1/users/{}/end", segment(user));
        let (status, body) = self
            .query(Method::POST, &path, Some(&body), self.options.timeout)
            .await?;
        expect_ok(status, &body)?;
        Ok(decode::<EndUserResponse>(&body)?.ended)
    }

    /// A take, claiming the session first for `claim` (only if the service
    /// lists it under `if_listed_by`, when given), in a request shared with
    /// the takes asked meanwhile.
    pub(crate) async fn take_waiting(
        self: &Arc<Self>,
        session: &str,
        claim: Option<Duration>,
        if_listed_by: Option<&str>,
    ) -> Result<Claimed, PresenceError> {
        let (reply, answer) = oneshot::channel();
        let start_runner = self.takes.lock().push(TakeWaiter {
            session: session.to_string(),
            claim,
            if_listed_by: if_listed_by.map(str::to_string),
            reply,
        });
        if start_runner {
            tokio::spawn(self.clone().run_takes());
        }
        // Room for the request and its one retry (see run_takes).
        let within = self.options.timeout * 2;
        self.answer_within(answer, within).await
    }

    /// A batched query's answer, within the query timeout.
    async fn answer<T>(
        &self,
        answer: oneshot::Receiver<Result<T, PresenceError>>,
    ) -> Result<T, PresenceError> {
        self.answer_within(answer, self.options.timeout).await
    }

    /// A batched query's answer, within `timeout`.
    async fn answer_within<T>(
        &self,
        answer: oneshot::Receiver<Result<T, PresenceError>>,
        timeout: Duration,
    ) -> Result<T, PresenceError> {
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(PresenceError::Unavailable("client stopped".into())),
            Err(_) => Err(PresenceError::Timeout),
        }
    }

    /// Sends waiting takes, many per request, until none is left.
    async fn run_takes(self: Arc<Self>) {
        loop {
            let batch = self.takes.lock().next_batch();
            if batch.is_empty() {
                return;
            }
            // The claimed sessions are asked as takes too, so that a
            // service older than claims still takes them.
            let claims: Vec<&TakeWaiter> = batch
                .iter()
                .filter(|w| w.claim.is_some() && w.if_listed_by.is_none())
                .collect();
            let mut claims_if_listed: Vec<ListedClaim> = batch
                .iter()
                .filter_map(|w| {
                    w.if_listed_by.as_ref().map(|user| ListedClaim {
                        session: w.session.clone(),
                        user: user.clone(),
                    })
                })
                .collect();
            claims_if_listed.sort_unstable_by(|a, b| a.session.cmp(&b.session));
            claims_if_listed.dedup_by(|a, b| a.session == b.session);
            let names = |waiters: Vec<&TakeWaiter>| {
                let mut names: Vec<String> = waiters.iter().map(|w| w.session.clone()).collect();
                names.sort_unstable();
                names.dedup();
                names
            };
            let claim_ms = batch.iter().filter_map(|w| w.claim).max().map(wire_ms);
            let request = TakeManyRequest {
                node: claim_ms.map(|_| self.options.node_id.clone()),
                claim_ms,
                claims: names(claims),
                claims_if_listed,
                sessions: names(batch.iter().collect()),
                keep: self.options.keep.clone(),
                // A fresh name for each request, kept by its retry.
                token: Some(uuid::Uuid::new_v4().simple().to_string()),
            };
            // None from a service older than `/v1/take`: one request each.
            let mut answer = self
                .batched::<_, TakeManyResponse>("/v1/take", &request)
                .await;
            // No answer: the service may have taken the records all the
            // same, and its answer was lost. The same request once more is
            // answered as the first one was (the token), so those records
            // are not lost with it; a service older than tokens finds
            // nothing the second time, as any retry would.
            if matches!(
                answer,
                Err(PresenceError::Timeout | PresenceError::Unavailable(_))
            ) && !self.stopped.load(Ordering::Acquire)
            {
                tracing::debug!(
                    sessions = request.sessions.len(),
                    "take unanswered; asked again"
                );
                answer = self
                    .batched::<_, TakeManyResponse>("/v1/take", &request)
                    .await;
            }
            match answer {
                Ok(Some(TakeManyResponse {
                    mut records,
                    mut displaced,
                    listed,
                })) => {
                    for waiter in batch {
                        // A session asked twice at once: the first caller
                        // gets it, unless it is the record kept in place.
                        let record = match records.get(&waiter.session) {
                            Some(r) if self.options.keep.as_ref() == Some(r) => Some(r.clone()),
                            _ => records.remove(&waiter.session),
                        };
                        let displaced = displaced.remove(&waiter.session);
                        let listed = match (&listed, &waiter.if_listed_by) {
                            (Some(listed), Some(_)) => {
                                Some(listed.get(&waiter.session).cloned().unwrap_or_default())
                            }
                            _ => None,
                        };
                        let _ = waiter.reply.send(Ok(Claimed {
                            record,
                            displaced,
                            listed,
                        }));
                    }
                }
                Ok(None) => {
                    for waiter in batch {
                        let taken = self.take_one(&waiter.session).await;
                        let _ = waiter.reply.send(taken.map(|record| Claimed {
                            record,
                            ..Claimed::default()
                        }));
                    }
                }
                Err(e) => {
                    for waiter in batch {
                        let _ = waiter.reply.send(Err(e.clone()));
                    }
                }
            }
        }
    }

    /// A batched call (`POST path`); `None` when the service answers 404 or
    /// 405, as one older than the call does.
    async fn batched<T: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        request: &T,
    ) -> Result<Option<R>, PresenceError> {
        let (status, body) = self
            .query(Method::POST, path, Some(request), self.options.timeout)
            .await?;
        if matches!(
            status,
            StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED
        ) {
            return Ok(None);
        }
        expect_ok(status, &body)?;
        decode(&body).map(Some)
    }

    /// Sends waiting parks, many per request, until none is left.
    async fn run_parks(self: Arc<Self>) {
        loop {
            let batch = self.parks.lock().next_batch();
            if batch.is_empty() {
                return;
            }
            let request = ParkManyRequest {
                node: Some(self.options.node_id.clone()),
                parks: batch.iter().map(|w| w.item.clone()).collect(),
            };
            // None from a service older than `/v1/park`: one request each.
            let answer = self
                .batched::<_, ParkManyResponse>("/v1/park", &request)
                .await
                .map(|answer| answer.map(|a| a.superseded.into_iter().collect::<HashSet<_>>()));
            match answer {
                Ok(Some(refused)) => {
                    for waiter in batch {
                        let parked = if refused.contains(&waiter.item.session) {
                            Parked::Superseded
                        } else {
                            Parked::Stored
                        };
                        let _ = waiter.reply.send(Ok(parked));
                    }
                }
                Ok(None) => {
                    for waiter in batch {
                        let _ = waiter.reply.send(self.park_one(waiter.item).await);
                    }
                }
                Err(e) => {
                    for waiter in batch {
                        let _ = waiter.reply.send(Err(e.clone()));
                    }
                }
            }
        }
    }

    /// `PUT /v1/sessions/{session}`: one record.
    async fn put_record(&self, session: &str, body: &ParkRequest) -> Result<(), PresenceError> {
        let path = format!("/v1/sessions/{}", segment(session));
        let (status, body) = self
            .query(Method::PUT, &path, Some(body), self.options.timeout)
            .await?;
        expect_ok(status, &body)
    }

    /// One park by this node, as its own request.
    async fn park_one(&self, item: ParkItem) -> Result<Parked, PresenceError> {
        let body = ParkRequest {
            record: item.record,
            ttl_ms: item.ttl_ms,
            user: item.user,
            node: Some(self.options.node_id.clone()),
        };
        match self.put_record(&item.session, &body).await {
            Err(PresenceError::Status { status: 409, .. }) => Ok(Parked::Superseded),
            other => other.map(|()| Parked::Stored),
        }
    }

    /// `POST /v1/sessions/{session}/take`: one session.
    async fn take_one(&self, session: &str) -> Result<Option<Data>, PresenceError> {
        let path = format!("/v1/sessions/{}/take", segment(session));
        let (status, body) = self
            .query(Method::POST, &path, None::<&()>, self.options.timeout)
            .await?;
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        expect_ok(status, &body)?;
        Ok(Some(decode::<TakeResponse>(&body)?.record))
    }

    /// Sends waiting lookups, several per request, until none is left.
    async fn run_lookups(self: Arc<Self>) {
        loop {
            let batch = self.lookups.lock().next_batch();
            if batch.is_empty() {
                return;
            }
            let mut request = LookupRequest {
                users: Vec::new(),
                sessions: Vec::new(),
            };
            for waiter in &batch {
                request.users.extend(waiter.users.iter().cloned());
                request.sessions.extend(waiter.sessions.iter().cloned());
            }
            for names in [&mut request.users, &mut request.sessions] {
                names.sort_unstable();
                names.dedup();
            }
            let answer: Result<Vec<Owner>, PresenceError> = async {
                let (status, body) = self
                    .query(
                        Method::POST,
                        "/v1/lookup",
                        Some(&request),
                        self.options.timeout,
                    )
                    .await?;
                expect_ok(status, &body)?;
                Ok(decode::<LookupResponse>(&body)?.sessions)
            }
            .await;
            match answer {
                Ok(owners) => {
                    let mut by_session: HashMap<&str, Vec<&Owner>> = HashMap::new();
                    let mut by_user: HashMap<&str, Vec<&Owner>> = HashMap::new();
                    for owner in &owners {
                        by_session.entry(&owner.session).or_default().push(owner);
                        by_user.entry(&owner.user).or_default().push(owner);
                    }
                    for waiter in batch {
                        let mut mine: Vec<Owner> = Vec::new();
                        let asked = [(&waiter.sessions, &by_session), (&waiter.users, &by_user)];
                        for (names, index) in asked {
                            for name in names {
                                let found = index.get(name.as_str()).into_iter().flatten();
                                mine.extend(found.map(|owner| (*owner).clone()));
                            }
                        }
                        mine.sort_unstable_by(|a, b| {
                            (&a.session, &a.node).cmp(&(&b.session, &b.node))
                        });
                        mine.dedup();
                        let _ = waiter.reply.send(Ok(mine));
                    }
                }
                Err(e) => {
                    for waiter in batch {
                        let _ = waiter.reply.send(Err(e.clone()));
                    }
                }
            }
        }
    }

    /// A query: waits for one of the [`MAX_QUERIES`] permits, then makes the
    /// request; the wait and the request together within `timeout`.
    async fn query<T: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&T>,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), PresenceError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let _permit = tokio::time::timeout_at(deadline, self.permits.acquire())
            .await
            .map_err(|_| PresenceError::Timeout)?
            .map_err(|_| PresenceError::Unavailable("client stopped".into()))?;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.transport.call(method, path, body, left).await
    }
}

/// A duration as the API takes it: whole milliseconds, at least one.
fn wire_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

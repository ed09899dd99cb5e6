//! The gateway's side of the presence service: [`PresenceClient`].
//!
//! A gateway must never wait on presence to serve its clients, so reporting
//! is fire-and-forget: [`PresenceClient::enqueue`] appends an [`Op`] to an
//! in-memory queue and returns; one background task sends the queue in
//! batches (every ~50 ms, or at once when 500 are waiting), renews the
//! node's lease every lease/3 even when idle, keeps the ops while the
//! service is unreachable and replays them in order when it is back.
//!
//! Every op gets a sequence number; a batch carries the number of its first
//! op, so a batch re-sent after a lost response is not applied twice. When
//! the service answers `need_full` (it restarted, or the node's lease ran
//! out), or when the queue overflows, the task takes a snapshot of the
//! node's live sessions through the `snapshot` callback and sends a full
//! sync. That is correct only if the gateway changes its own state *before*
//! enqueueing the op that reports it: then every op queued before the
//! snapshot is reflected in it (and is dropped, except handoffs, which a
//! snapshot cannot show and which travel with the full sync), and every op
//! queued after it is replayed after the full sync, harmlessly.
//!
//! The queries (`members`, `lookup`, `park`, `take`) are plain requests with
//! a short timeout. A take that gets no answer is sent once more with the
//! same token, which the service answers as it did the first time: the
//! first may have taken the records before its answer was lost. The HTTP
//! client is hyper's (already in the tree through axum); the service
//! speaks plain HTTP on an internal network, so no TLS.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use parking_lot::Mutex;
use roomcast_protocol::Data;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{oneshot, Notify};

use crate::api::{
    EndUserRequest, EndUserResponse, ErrorBody, ListedClaim, LookupRequest, LookupResponse, Member,
    MembersResponse, Op, Owner, ParkItem, ParkManyRequest, ParkManyResponse, ParkRequest,
    SyncRequest, SyncResponse, TakeManyRequest, TakeManyResponse, TakeResponse,
};

/// Produces connect + join ops for every live session of the node.
pub type Snapshot = Arc<dyn Fn() -> Vec<Op> + Send + Sync>;

/// Shortest and longest wait between failed syncs.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How often an outage is logged again while it lasts.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// Most queries (`members`, `lookup`, `park`, `take`) in flight at once;
/// the others wait their turn, within their timeout. A reconnect storm asks
/// for thousands at once: unbounded, each beyond the pool's idle
/// connections would open a connection of its own.
const MAX_QUERIES: usize = 32;
/// Lookups (and takes, and parks) asked while others are in flight go out together, up
/// to this many names per request, in at most [`BATCH_RUNNERS`] requests of
/// each kind at once: a storm of resumes costs a few requests, not one each.
const BATCH_NAMES: usize = 1000;
const BATCH_RUNNERS: usize = 4;

/// Settings of a [`PresenceClient`]; [`ClientOptions::new`] gives the defaults.
#[derive(Clone)]
pub struct ClientOptions {
    /// Base URL of the service, `http://host:port`.
    pub url: String,
    /// The shared `presence.key`, sent as `Authorization: Bearer`.
    pub key: Option<String>,
    pub node_id: String,
    /// This run of the node (a fresh random string per process start).
    pub incarnation: String,
    /// The node's lease; renewed every lease/3.
    pub lease: Duration,
    /// Timeout of `members`, `lookup`, `park` and of each of a take's two
    /// tries (a take waits twice this at most).
    pub timeout: Duration,
    /// Timeout of one sync request (a full sync can be large).
    pub sync_timeout: Duration,
    /// How long ops gather before a batch is sent.
    pub flush_interval: Duration,
    /// Most ops per sync request.
    pub batch_max: usize,
    /// Most ops kept while the service is unreachable; beyond, the queue is
    /// dropped and replaced by a full sync.
    pub max_queue: usize,
    /// A parked record equal to this one is read by a take but left in
    /// place, so it answers every take until it expires (the gateway's
    /// mark of a session the API ended). Against a service older than
    /// that, the first take consumes it.
    pub keep: Option<Data>,
}

impl ClientOptions {
    pub fn new(
        url: impl Into<String>,
        node_id: impl Into<String>,
        incarnation: impl Into<String>,
    ) -> Self {
        ClientOptions {
            url: url.into(),
            key: None,
            node_id: node_id.into(),
            incarnation: incarnation.into(),
            lease: Duration::from_secs(15),
            timeout: Duration::from_secs(1),
            sync_timeout: Duration::from_secs(5),
            flush_interval: Duration::from_millis(50),
            batch_max: 500,
            max_queue: 100_000,
            keep: None,
        }
    }
}

/// What a claim found ([`PresenceClient::claim`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claimed {
    /// The record parked, taken as by [`PresenceClient::take`].
    pub record: Option<Data>,
    /// The other node whose claim on the session this one replaced: it
    /// resumed the session on the token's word before, and may still hold
    /// it. `None` from services older than that answer.
    pub displaced: Option<String>,
    /// Asked with [`PresenceClient::take_or_claim`]: the nodes listing the
    /// session under its user (the claim was made if any). `None` when
    /// the service is older than that question, and the answer is a plain
    /// take's.
    pub listed: Option<Vec<String>>,
}

/// What became of a park ([`PresenceClient::park`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parked {
    Stored,
    /// Refused: another node claimed the session since (it resumed there).
    Superseded,
}

/// Why a call to the presence service failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PresenceError {
    #[error("presence service unreachable: {0}")]
    Unavailable(String),
    #[error("presence service did not answer in time")]
    Timeout,
    #[error("presence service refused the key")]
    Unauthorized,
    #[error("presence service answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("bad answer from the presence service: {0}")]
    Decode(String),
}

/// What the background task knows, for readiness checks and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientStatus {
    /// The last sync succeeded.
    pub connected: bool,
    /// Incarnation of the presence process last answering.
    pub presence: Option<String>,
    /// Ops waiting to be sent.
    pub queued: usize,
    /// A full sync is due.
    pub full_pending: bool,
    /// Times the queue overflowed and was replaced by a full sync.
    pub overflows: u64,
}

/// The ops not yet acknowledged; op `i` has sequence number `first_seq + i`.
struct Outbox {
    ops: VecDeque<Op>,
    first_seq: u64,
    next_seq: u64,
    full_pending: bool,
    /// Bumped on every overflow, so a full sync that started before one
    /// does not clear the flag the overflow set.
    overflows: u64,
}

impl Outbox {
    /// Drops ops numbered below `seq`, returning the handoffs among them.
    fn drop_below(&mut self, seq: u64) -> Vec<Op> {
        let n = (seq.saturating_sub(self.first_seq) as usize).min(self.ops.len());
        self.first_seq += n as u64;
        self.ops
            .drain(..n)
            .filter(|op| matches!(op, Op::Handoff { .. }))
            .collect()
    }
}

struct Shared {
    http: Client<HttpConnector, Full<Bytes>>,
    base: String,
    auth: Option<HeaderValue>,
    options: ClientOptions,
    outbox: Mutex<Outbox>,
    /// Wakes the idle task: ops were queued, a flush was asked, or it must stop.
    wake: Notify,
    /// Cuts short the task's pauses when it must stop.
    stop: Notify,
    urgent: AtomicBool,
    stopped: AtomicBool,
    /// Every op numbered below this has been applied by the service.
    acked: AtomicU64,
    acked_changed: Notify,
    connected: AtomicBool,
    presence: Mutex<Option<String>>,
    /// Permits for queries in flight ([`MAX_QUERIES`]); syncs do not wait here.
    queries: tokio::sync::Semaphore,
    lookups: Mutex<Batches<LookupWaiter>>,
    takes: Mutex<Batches<TakeWaiter>>,
    parks: Mutex<Batches<ParkWaiter>>,
}

/// Queries waiting to share a request, and how many tasks send them.
struct Batches<W> {
    waiting: VecDeque<W>,
    runners: usize,
}

impl<W> Default for Batches<W> {
    fn default() -> Self {
        Batches {
            waiting: VecDeque::new(),
            runners: 0,
        }
    }
}

/// A caller waiting in [`Batches`].
trait Waiter {
    /// How many names it adds to a request.
    fn names(&self) -> usize;
    /// Its caller stopped waiting (timed out).
    fn abandoned(&self) -> bool;
}

impl<W: Waiter> Batches<W> {
    /// Queues a waiter; true when a new sending task must be started.
    fn push(&mut self, waiter: W) -> bool {
        self.waiting.push_back(waiter);
        let start = self.runners < BATCH_RUNNERS;
        self.runners += usize::from(start);
        start
    }

    /// The next request's waiters (at most [`BATCH_NAMES`] names, or one
    /// waiter that has more). Empty when none is left: the calling task
    /// then stops, and is counted out here.
    fn next_batch(&mut self) -> Vec<W> {
        // Whoever timed out waiting is no longer asking.
        self.waiting.retain(|waiter| !waiter.abandoned());
        let mut names = 0;
        let mut take = 0;
        for waiter in &self.waiting {
            names += waiter.names();
            if take > 0 && names > BATCH_NAMES {
                break;
            }
            take += 1;
        }
        if take == 0 {
            self.runners -= 1;
        }
        self.waiting.drain(..take).collect()
    }
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

/// Stops the background task when the last [`PresenceClient`] clone drops.
struct StopOnDrop(Arc<Shared>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stopped.store(true, Ordering::Release);
        self.0.wake.notify_one();
        self.0.stop.notify_one();
    }
}

/// The gateway's handle on the presence service. Cheap to clone.
#[derive(Clone)]
pub struct PresenceClient {
    shared: Arc<Shared>,
    _stop: Arc<StopOnDrop>,
}

impl PresenceClient {
    /// Starts the client with default options (1 s query timeout, 50 ms
    /// batches). Must be called inside a tokio runtime.
    pub fn start(
        url: impl Into<String>,
        key: Option<String>,
        node_id: impl Into<String>,
        incarnation: impl Into<String>,
        lease: Duration,
        snapshot: Snapshot,
    ) -> PresenceClient {
        let mut options = ClientOptions::new(url, node_id, incarnation);
        options.key = key;
        options.lease = lease;
        PresenceClient::start_with(options, snapshot)
    }

    /// Starts the client. Its first sync is a full one (the snapshot), so a
    /// restarted gateway replaces what the service knew of its previous run.
    pub fn start_with(options: ClientOptions, snapshot: Snapshot) -> PresenceClient {
        let http = Client::builder(TokioExecutor::new())
            // Without a timer the pool never closes idle connections.
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            // Every query in flight and the sync keep their connection.
            .pool_max_idle_per_host(MAX_QUERIES + 1)
            .build_http();
        let auth = options
            .key
            .as_deref()
            .filter(|k| !k.is_empty())
            .and_then(|k| HeaderValue::from_str(&format!("Bearer {k}")).ok());
        let shared = Arc::new(Shared {
            http,
            base: options.url.trim_end_matches('/').to_string(),
            auth,
            outbox: Mutex::new(Outbox {
                ops: VecDeque::new(),
                first_seq: 0,
                next_seq: 0,
                full_pending: true,
                overflows: 0,
            }),
            options,
            wake: Notify::new(),
            stop: Notify::new(),
            urgent: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            acked: AtomicU64::new(0),
            acked_changed: Notify::new(),
            connected: AtomicBool::new(false),
            presence: Mutex::new(None),
            queries: tokio::sync::Semaphore::new(MAX_QUERIES),
            lookups: Mutex::default(),
            takes: Mutex::default(),
            parks: Mutex::default(),
        });
        tokio::spawn(Syncer::new(shared.clone(), snapshot).run());
        PresenceClient {
            _stop: Arc::new(StopOnDrop(shared.clone())),
            shared,
        }
    }

    /// Queues an op. Never waits on the network.
    pub fn enqueue(&self, op: Op) {
        let shared = &self.shared;
        let mut outbox = shared.outbox.lock();
        if outbox.ops.len() >= shared.options.max_queue {
            // Too far behind to replay: start over from a snapshot.
            outbox.ops.clear();
            outbox.first_seq = outbox.next_seq;
            outbox.full_pending = true;
            outbox.overflows += 1;
            tracing::warn!(
                max = shared.options.max_queue,
                "presence queue overflowed; a full sync will replace it"
            );
        }
        outbox.ops.push_back(op);
        outbox.next_seq += 1;
        drop(outbox);
        shared.wake.notify_one();
    }

    /// Waits until every op queued before this call has been applied by the
    /// service and no full sync is due (for a drain: the handoffs must be
    /// there before the exit; at startup: the first full sync is done).
    /// False when `timeout` passed first.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let target = self.shared.outbox.lock().next_seq;
        self.shared.urgent.store(true, Ordering::Release);
        self.shared.wake.notify_one();
        let wait = async {
            loop {
                let changed = self.shared.acked_changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                let full_pending = self.shared.outbox.lock().full_pending;
                if !full_pending && self.shared.acked.load(Ordering::Acquire) >= target {
                    return;
                }
                changed.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }

    /// Stops the background task (also done when the last clone drops).
    pub fn shutdown(&self) {
        self.shared.stopped.store(true, Ordering::Release);
        self.shared.wake.notify_one();
        self.shared.stop.notify_one();
    }

    pub fn status(&self) -> ClientStatus {
        let outbox = self.shared.outbox.lock();
        ClientStatus {
            connected: self.shared.connected.load(Ordering::Relaxed),
            presence: self.shared.presence.lock().clone(),
            queued: outbox.ops.len(),
            full_pending: outbox.full_pending,
            overflows: outbox.overflows,
        }
    }

    /// Members of a room, cluster-wide.
    pub async fn members(&self, room: &str) -> Result<Vec<Member>, PresenceError> {
        let path = format!("/v1/rooms/{}/members", segment(room));
        let (status, body) = self
            .shared
            .query(Method::GET, &path, None::<&()>, self.shared.options.timeout)
            .await?;
        expect_ok(status, &body)?;
        Ok(decode::<MembersResponse>(&body)?.members)
    }

    /// Which nodes hold the given users' sessions and the given sessions.
    /// Lookups made while others are in flight share a request.
    pub async fn lookup(
        &self,
        users: &[String],
        sessions: &[String],
    ) -> Result<Vec<Owner>, PresenceError> {
        let (reply, answer) = oneshot::channel();
        let start_runner = self.shared.lookups.lock().push(LookupWaiter {
            users: users.to_vec(),
            sessions: sessions.to_vec(),
            reply,
        });
        if start_runner {
            tokio::spawn(self.shared.clone().run_lookups());
        }
        self.shared.answer(answer).await
    }

    /// Parks the record of a session whose connection to this node ended,
    /// for `ttl` (replacing any earlier one), listed under `user` when one
    /// is given (see [`Self::end_user`]). Refused, as
    /// [`Parked::Superseded`], while another node holds a claim on the
    /// session ([`Self::claim`]): it resumed there since.
    pub async fn park(
        &self,
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
        let start_runner = self.shared.parks.lock().push(ParkWaiter {
            item,
            weight,
            reply,
        });
        if start_runner {
            tokio::spawn(self.shared.clone().run_parks());
        }
        self.shared.answer(answer).await
    }

    /// Stores `record` for a session whatever node holds it (the mark of a
    /// session the API ended), for `ttl`, replacing any earlier one.
    pub async fn mark(
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
        self.shared.put_record(session, &body).await
    }

    /// Replaces the record of every session `user` left parked with
    /// `record`, kept `ttl`; returns how many were replaced.
    pub async fn end_user(
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
            .shared
            .query(
                Method::POST,
                &path,
                Some(&body),
                self.shared.options.timeout,
            )
            .await?;
        expect_ok(status, &body)?;
        Ok(decode::<EndUserResponse>(&body)?.ended)
    }

    /// Takes (gets and deletes, atomically) a parked record; `None` when
    /// there is none (never parked, expired, or already taken). Takes made
    /// while others are in flight share a request.
    pub async fn take(&self, session: &str) -> Result<Option<Data>, PresenceError> {
        Ok(self.take_waiting(session, None, None).await?.record)
    }

    /// A resume's question in one request: takes the session's parked
    /// record, and claims the session for this node first (as
    /// [`Self::claim`]) if the service lists it under `user` on any node,
    /// answering those nodes in [`Claimed::listed`]. Against a service
    /// older than that question it is a plain take, and `listed` is `None`.
    pub async fn take_or_claim(
        &self,
        session: &str,
        user: &str,
        ttl: Duration,
    ) -> Result<Claimed, PresenceError> {
        self.take_waiting(session, Some(ttl), Some(user)).await
    }

    /// Claims a session for this node, for `ttl`, then takes its parked
    /// record, if any, like [`Self::take`]. For a session this node
    /// resumes on the token's word while another node still lists it:
    /// until this node parks it, or `ttl` passes, that node's park of it
    /// is refused, so no copy is left parked while it is live here. A park
    /// that landed before the claim is taken here. Against a service older
    /// than claims it is a plain take. The answer names the node whose
    /// claim this one replaced, if another's: it resumed the session
    /// before, and is to be told the session moved on.
    pub async fn claim(&self, session: &str, ttl: Duration) -> Result<Claimed, PresenceError> {
        self.take_waiting(session, Some(ttl), None).await
    }

    async fn take_waiting(
        &self,
        session: &str,
        claim: Option<Duration>,
        if_listed_by: Option<&str>,
    ) -> Result<Claimed, PresenceError> {
        let (reply, answer) = oneshot::channel();
        let start_runner = self.shared.takes.lock().push(TakeWaiter {
            session: session.to_string(),
            claim,
            if_listed_by: if_listed_by.map(str::to_string),
            reply,
        });
        if start_runner {
            tokio::spawn(self.shared.clone().run_takes());
        }
        // Room for the request and its one retry (see run_takes).
        let within = self.shared.options.timeout * 2;
        self.shared.answer_within(answer, within).await
    }
}

impl Shared {
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
        let _permit = tokio::time::timeout_at(deadline, self.queries.acquire())
            .await
            .map_err(|_| PresenceError::Timeout)?
            .map_err(|_| PresenceError::Unavailable("client stopped".into()))?;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.call(method, path, body, left).await
    }

    /// One request; the status and the whole body, within `timeout`.
    async fn call<T: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&T>,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), PresenceError> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some(auth) = &self.auth {
            request = request.header(header::AUTHORIZATION, auth.clone());
        }
        let payload = match body {
            Some(body) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                serde_json::to_vec(body).map_err(|e| PresenceError::Decode(e.to_string()))?
            }
            None => Vec::new(),
        };
        let request = request
            .body(Full::new(Bytes::from(payload)))
            .map_err(|e| PresenceError::Unavailable(format!("bad request: {e}")))?;
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| PresenceError::Unavailable(error_chain(&e)))?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| PresenceError::Unavailable(e.to_string()))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| PresenceError::Timeout)?
    }
}

/// The background task: batches, renewals, full syncs, retries.
struct Syncer {
    shared: Arc<Shared>,
    snapshot: Snapshot,
    /// Handoffs taken out of the queue for a full sync that has not
    /// succeeded yet.
    carried: Vec<Op>,
    next_renewal: Instant,
    failing_since: Option<Instant>,
    last_logged: Option<Instant>,
}

impl Syncer {
    fn new(shared: Arc<Shared>, snapshot: Snapshot) -> Syncer {
        Syncer {
            shared,
            snapshot,
            carried: Vec::new(),
            next_renewal: Instant::now(),
            failing_since: None,
            last_logged: None,
        }
    }

    fn stopped(&self) -> bool {
        self.shared.stopped.load(Ordering::Acquire)
    }

    /// Sleeps, unless told to stop; true when it should stop.
    async fn pause(&self, duration: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(duration) => {}
            _ = self.shared.stop.notified() => {}
        }
        self.stopped()
    }

    async fn run(mut self) {
        let renew_every = self.shared.options.lease / 3;
        let mut backoff = MIN_BACKOFF;
        loop {
            if self.stopped() {
                return;
            }
            let (queued, full) = {
                let outbox = self.shared.outbox.lock();
                (outbox.ops.len(), outbox.full_pending)
            };
            let urgent = self.shared.urgent.swap(false, Ordering::AcqRel);
            if queued == 0 && !full && !urgent {
                let until = self.next_renewal.saturating_duration_since(Instant::now());
                if !until.is_zero() {
                    tokio::select! {
                        _ = self.shared.wake.notified() => {}
                        _ = tokio::time::sleep(until) => {}
                    }
                    continue;
                }
            } else if !full
                && !urgent
                && queued < self.shared.options.batch_max
                && self.pause(self.shared.options.flush_interval).await
            {
                return;
            }
            match self.sync_once().await {
                Ok(()) => {
                    backoff = MIN_BACKOFF;
                    self.next_renewal = Instant::now() + renew_every;
                    if let Some(since) = self.failing_since.take() {
                        tracing::info!(
                            after_ms = since.elapsed().as_millis() as u64,
                            "presence service reachable again"
                        );
                    }
                    self.shared.connected.store(true, Ordering::Relaxed);
                }
                Err(e) => {
                    self.shared.connected.store(false, Ordering::Relaxed);
                    let now = Instant::now();
                    self.failing_since.get_or_insert(now);
                    if self.last_logged.is_none_or(|t| now - t >= LOG_EVERY) {
                        self.last_logged = Some(now);
                        let queued = self.shared.outbox.lock().ops.len();
                        tracing::warn!(error = %e, queued, "presence sync failed; ops kept for replay");
                    }
                    if self.pause(backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Sends one request: the full sync if due, else the next batch (or an
    /// empty one, renewing the lease).
    async fn sync_once(&mut self) -> Result<(), PresenceError> {
        let full = self.shared.outbox.lock().full_pending;
        if full {
            self.full_sync().await
        } else {
            self.delta_sync().await
        }
    }

    async fn delta_sync(&mut self) -> Result<(), PresenceError> {
        let (seq, ops) = {
            let outbox = self.shared.outbox.lock();
            let n = outbox.ops.len().min(self.shared.options.batch_max);
            (
                outbox.first_seq,
                outbox.ops.iter().take(n).cloned().collect::<Vec<_>>(),
            )
        };
        let end = seq + ops.len() as u64;
        let response = self.send(false, seq, ops).await?;
        let mut outbox = self.shared.outbox.lock();
        if response.need_full {
            outbox.full_pending = true;
            drop(outbox);
            tracing::info!("presence service asks for a full sync");
            return Ok(());
        }
        outbox.drop_below(end);
        drop(outbox);
        self.acknowledge(end);
        Ok(())
    }

    async fn full_sync(&mut self) -> Result<(), PresenceError> {
        // Ops numbered below `seq` changed the gateway's state before the
        // snapshot is taken, so the snapshot shows them.
        let (seq, overflows) = {
            let outbox = self.shared.outbox.lock();
            (outbox.next_seq, outbox.overflows)
        };
        let mut ops = (self.snapshot)();
        {
            let mut outbox = self.shared.outbox.lock();
            let handoffs = outbox.drop_below(seq);
            self.carried.extend(handoffs);
            // Handoffs queued while the snapshot was taken travel too; the
            // service ignores them for sessions the snapshot lists.
            ops.extend(self.carried.iter().cloned());
            ops.extend(
                outbox
                    .ops
                    .iter()
                    .filter(|op| matches!(op, Op::Handoff { .. }))
                    .cloned(),
            );
        }
        let sessions = ops
            .iter()
            .filter(|op| matches!(op, Op::Connect { .. }))
            .count();
        let response = self.send(true, seq, ops).await?;
        if response.need_full {
            return Err(PresenceError::Status {
                status: 200,
                message: "full sync answered with need_full".into(),
            });
        }
        {
            let mut outbox = self.shared.outbox.lock();
            if outbox.overflows == overflows {
                outbox.full_pending = false;
            }
        }
        self.carried.clear();
        self.acknowledge(seq);
        tracing::info!(sessions, "full presence sync done");
        Ok(())
    }

    async fn send(
        &self,
        full: bool,
        seq: u64,
        ops: Vec<Op>,
    ) -> Result<SyncResponse, PresenceError> {
        let options = &self.shared.options;
        let request = SyncRequest {
            incarnation: options.incarnation.clone(),
            lease_ms: Some(options.lease.as_millis() as u64),
            full,
            seq: Some(seq),
            ops,
        };
        let path = format!("/v1/nodes/{}/sync", segment(&options.node_id));
        let (status, body) = self
            .shared
            .call(Method::POST, &path, Some(&request), options.sync_timeout)
            .await?;
        expect_ok(status, &body)?;
        let response: SyncResponse = decode(&body)?;
        let mut known = self.shared.presence.lock();
        if known.as_deref() != Some(response.presence.as_str()) {
            if known.is_some() {
                tracing::info!(presence = %response.presence, "presence service restarted");
            }
            *known = Some(response.presence.clone());
        }
        Ok(response)
    }

    fn acknowledge(&self, seq: u64) {
        self.shared.acked.fetch_max(seq, Ordering::AcqRel);
        self.shared.acked_changed.notify_waiters();
    }
}

/// A duration as the API takes it: whole milliseconds, at least one.
fn wire_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn expect_ok(status: StatusCode, body: &[u8]) -> Result<(), PresenceError> {
    if status.is_success() {
        return Ok(());
    }
    if status == StatusCode::UNAUTHORIZED {
        return Err(PresenceError::Unauthorized);
    }
    let message = serde_json::from_slice::<ErrorBody>(body)
        .map(|e| e.message)
        .unwrap_or_else(|_| String::from_utf8_lossy(body).into_owned());
    Err(PresenceError::Status {
        status: status.as_u16(),
        message,
    })
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, PresenceError> {
    serde_json::from_slice(body).map_err(|e| PresenceError::Decode(e.to_string()))
}

/// The error and its causes, joined: hyper's top-level message alone
/// ("client error (Connect)") does not say what went wrong.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
}

/// Percent-encodes one path segment (room and session names).
fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:@=".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(segment("chat:lobby@x=1"), "chat:lobby@x=1");
        assert_eq!(segment("a b/c?é"), "a%20b%2Fc%3F%C3%A9");
    }

    #[test]
    fn dropping_acknowledged_ops_keeps_the_handoffs_for_a_full_sync() {
        let mut outbox = Outbox {
            ops: VecDeque::from(vec![
                Op::connect("s1", "u", None),
                Op::handoff("s1", 10),
                Op::join("s2", "r"),
            ]),
            first_seq: 5,
            next_seq: 8,
            full_pending: false,
            overflows: 0,
        };
        assert_eq!(outbox.drop_below(7), [Op::handoff("s1", 10)]);
        assert_eq!(outbox.first_seq, 7);
        assert_eq!(outbox.ops.len(), 1);
        assert!(outbox.drop_below(3).is_empty(), "already dropped");
        outbox.drop_below(100);
        assert_eq!((outbox.first_seq, outbox.ops.len()), (8, 0));
    }
}

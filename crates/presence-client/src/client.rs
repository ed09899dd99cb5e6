//! The gateway's side of the presence service: [`PresenceClient`].
//!
//! A gateway must never wait on presence to serve its clients, so reporting
//! is fire-and-forget: [`PresenceClient::enqueue`] appends an [`Op`] to an
//! in-memory queue and returns; one background task sends the queue in
//! batches (every ~50 ms, or at once when 500 are waiting), renews the
//! node's lease every lease/3 even when idle, keeps the ops while the
//! service is unreachable and replays them in order when it is back
//! (`sync.rs` beside this file).
//!
//! The queries (`members`, `lookup`, `park`, `take`) are plain requests with
//! a short timeout, batched when many are asked at once (`queries.rs`,
//! `batch.rs`), over one HTTP transport (`http.rs`).
//!
//! This module is the public face of all of them: the types they take and
//! answer are re-exported here.

use std::sync::Arc;
use std::time::Duration;

use roomcast_protocol::Data;

use crate::api::{Member, Op, Owner};
use crate::http::Transport;
use crate::queries::{Queries, MAX_QUERIES};
use crate::sync::OpSync;

pub use crate::http::PresenceError;
pub use crate::options::ClientOptions;
pub use crate::queries::{Claimed, Parked};
pub use crate::sync::{ClientStatus, Snapshot};

/// Stops the background task when the last [`PresenceClient`] clone drops.
struct StopOnDrop {
    sync: Arc<OpSync>,
    queries: Arc<Queries>,
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.sync.stop();
        self.queries.stop();
    }
}

/// The gateway's handle on the presence service. Cheap to clone.
#[derive(Clone)]
pub struct PresenceClient {
    sync: Arc<OpSync>,
    queries: Arc<Queries>,
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
        // Every query in flight and the sync keep their connection.
        let transport = Transport::new(&options.url, options.key.as_deref(), MAX_QUERIES + 1);
        let queries = Arc::new(Queries::new(transport.clone(), options.clone()));
        let sync = OpSync::start(transport, options, snapshot);
        PresenceClient {
            _stop: Arc::new(StopOnDrop {
                sync: sync.clone(),
                queries: queries.clone(),
            }),
            sync,
            queries,
        }
    }

    /// Queues an op. Never waits on the network.
    pub fn enqueue(&self, op: Op) {
        self.sync.enqueue(op);
    }

    /// Waits until every op queued before this call has been applied by the
    /// service and no full sync is due (for a drain: the handoffs must be
    /// there before the exit; at startup: the first full sync is done).
    /// False when `timeout` passed first.
    pub async fn flush(&self, timeout: Duration) -> bool {
        self.sync.flush(timeout).await
    }

    /// Stops the background task (also done when the last clone drops).
    pub fn shutdown(&self) {
        self.sync.stop();
        self.queries.stop();
    }

    pub fn status(&self) -> ClientStatus {
        self.sync.status()
    }

    /// Members of a room, cluster-wide.
    pub async fn members(&self, room: &str) -> Result<Vec<Member>, PresenceError> {
        self.queries.members(room).await
    }

    /// Which nodes hold the given users' sessions and the given sessions.
    /// Lookups made while others are in flight share a request.
    pub async fn lookup(
        &self,
        users: &[String],
        sessions: &[String],
    ) -> Result<Vec<Owner>, PresenceError> {
        self.queries.lookup(users, sessions).await
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
        self.queries.park(session, record, ttl, user).await
    }

    /// Stores `record` for a session whatever node holds it (the mark of a
    /// session the API ended), for `ttl`, replacing any earlier one.
    pub async fn mark(
        &self,
        session: &str,
        record: Data,
        ttl: Duration,
    ) -> Result<(), PresenceError> {
        self.queries.mark(session, record, ttl).await
    }

    /// Replaces the record of every session `user` left parked with
    /// `record`, kept `ttl`; returns how many were replaced.
    pub async fn end_user(
        &self,
        user: &str,
        record: Data,
        ttl: Duration,
    ) -> Result<u64, PresenceError> {
        self.queries.end_user(user, record, ttl).await
    }

    /// Takes (gets and deletes, atomically) a parked record; `None` when
    /// there is none (never parked, expired, or already taken). Takes made
    /// while others are in flight share a request.
    pub async fn take(&self, session: &str) -> Result<Option<Data>, PresenceError> {
        Ok(self.queries.take_waiting(session, None, None).await?.record)
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
        self.queries
            .take_waiting(session, Some(ttl), Some(user))
            .await
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
        self.queries.take_waiting(session, Some(ttl), None).await
    }
}

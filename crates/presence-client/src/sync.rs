//! The op sync: the node's connections reported to the presence service as
//! a replayable stream of [`Op`]s.
//!
//! A gateway must never wait on presence to serve its clients, so reporting
//! is fire-and-forget: [`OpSync::enqueue`] appends an [`Op`] to an
//! in-memory queue ([`OpQueue`]) and returns; one background task
//! ([`Syncer`]) sends the queue in batches (every ~50 ms, or at once when
//! 500 are waiting), renews the node's lease every lease/3 even when idle,
//! keeps the ops while the service is unreachable and replays them in order
//! when it is back.
//!
//! Every op gets a sequence number; a batch carries the number of its first
//! op, so a batch re-sent after a lost response is not applied twice. When
//! the service answers `need_full` (it restarted, or the node's lease ran
//! out), or when the queue overflows, the task takes a snapshot of the
//! node's live sessions through the [`Snapshot`] callback and sends a full
//! sync. That is correct only if the gateway changes its own state *before*
//! enqueueing the op that reports it: then every op queued before the
//! snapshot is reflected in it (and is dropped, except handoffs, which a
//! snapshot cannot show and which travel with the full sync), and every op
//! queued after it is replayed after the full sync, harmlessly.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Method;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::api::{Op, SyncRequest, SyncResponse};
use crate::http::{decode, expect_ok, segment, PresenceError, Transport};
use crate::options::ClientOptions;

/// Produces connect + join ops for every live session of the node.
pub type Snapshot = Arc<dyn Fn() -> Vec<Op> + Send + Sync>;

/// Shortest and longest wait between failed syncs.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How often an outage is logged again while it lasts.
const LOG_EVERY: Duration = Duration::from_secs(10);

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
struct OpQueue {
    ops: VecDeque<Op>,
    first_seq: u64,
    next_seq: u64,
    full_pending: bool,
    /// Bumped on every overflow, so a full sync that started before one
    /// does not clear the flag the overflow set.
    overflows: u64,
}

impl OpQueue {
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

/// The op queue and what the background task shares with the client.
pub(crate) struct OpSync {
    transport: Transport,
    options: ClientOptions,
    queue: Mutex<OpQueue>,
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
}

impl OpSync {
    /// Starts the background task, whose first sync is a full one (the
    /// snapshot). Must be called inside a tokio runtime.
    pub(crate) fn start(
        transport: Transport,
        options: ClientOptions,
        snapshot: Snapshot,
    ) -> Arc<OpSync> {
        let sync = Arc::new(OpSync {
            transport,
            options,
            queue: Mutex::new(OpQueue {
                ops: VecDeque::new(),
                first_seq: 0,
                next_seq: 0,
                full_pending: true,
                overflows: 0,
            }),
            wake: Notify::new(),
            stop: Notify::new(),
            urgent: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            acked: AtomicU64::new(0),
            acked_changed: Notify::new(),
            connected: AtomicBool::new(false),
            presence: Mutex::new(None),
        });
        tokio::spawn(Syncer::new(sync.clone(), snapshot).run());
        sync
    }

    /// Queues an op. Never waits on the network.
    pub(crate) fn enqueue(&self, op: Op) {
        let mut queue = self.queue.lock();
        if queue.ops.len() >= self.options.max_queue {
            // Too far behind to replay: start over from a snapshot.
            queue.ops.clear();
            queue.first_seq = queue.next_seq;
            queue.full_pending = true;
            queue.overflows += 1;
            tracing::warn!(
                max = self.options.max_queue,
                "presence queue overflowed; a full sync will replace it"
            );
        }
        queue.ops.push_back(op);
        queue.next_seq += 1;
        drop(queue);
        self.wake.notify_one();
    }

    /// Waits until every op queued before this call has been applied by the
    /// service and no full sync is due; false when `timeout` passed first.
    pub(crate) async fn flush(&self, timeout: Duration) -> bool {
        let target = self.queue.lock().next_seq;
        self.urgent.store(true, Ordering::Release);
        self.wake.notify_one();
        let wait = async {
            loop {
                let changed = self.acked_changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                let full_pending = self.queue.lock().full_pending;
                if !full_pending && self.acked.load(Ordering::Acquire) >= target {
                    return;
                }
                changed.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }

    /// Stops the background task.
    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.wake.notify_one();
        self.stop.notify_one();
    }

    pub(crate) fn status(&self) -> ClientStatus {
        let queue = self.queue.lock();
        ClientStatus {
            connected: self.connected.load(Ordering::Relaxed),
            presence: self.presence.lock().clone(),
            queued: queue.ops.len(),
            full_pending: queue.full_pending,
            overflows: queue.overflows,
        }
    }
}

/// The background task: batches, renewals, full syncs, retries.
struct Syncer {
    shared: Arc<OpSync>,
    snapshot: Snapshot,
    /// Handoffs taken out of the queue for a full sync that has not
    /// succeeded yet.
    carried: Vec<Op>,
    next_renewal: Instant,
    failing_since: Option<Instant>,
    last_logged: Option<Instant>,
}

impl Syncer {
    fn new(shared: Arc<OpSync>, snapshot: Snapshot) -> Syncer {
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
                let queue = self.shared.queue.lock();
                (queue.ops.len(), queue.full_pending)
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
                        let queued = self.shared.queue.lock().ops.len();
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
        let full = self.shared.queue.lock().full_pending;
        if full {
            self.full_sync().await
        } else {
            self.delta_sync().await
        }
    }

    async fn delta_sync(&mut self) -> Result<(), PresenceError> {
        let (seq, ops) = {
            let queue = self.shared.queue.lock();
            let n = queue.ops.len().min(self.shared.options.batch_max);
            (
                queue.first_seq,
                queue.ops.iter().take(n).cloned().collect::<Vec<_>>(),
            )
        };
        let end = seq + ops.len() as u64;
        let response = self.send(false, seq, ops).await?;
        let mut queue = self.shared.queue.lock();
        if response.need_full {
            queue.full_pending = true;
            drop(queue);
            tracing::info!("presence service asks for a full sync");
            return Ok(());
        }
        queue.drop_below(end);
        drop(queue);
        self.acknowledge(end);
        Ok(())
    }

    async fn full_sync(&mut self) -> Result<(), PresenceError> {
        // Ops numbered below `seq` changed the gateway's state before the
        // snapshot is taken, so the snapshot shows them.
        let (seq, overflows) = {
            let queue = self.shared.queue.lock();
            (queue.next_seq, queue.overflows)
        };
        let mut ops = (self.snapshot)();
        {
            let mut queue = self.shared.queue.lock();
            let handoffs = queue.drop_below(seq);
            self.carried.extend(handoffs);
            // Handoffs queued while the snapshot was taken travel too; the
            // service ignores them for sessions the snapshot lists.
            ops.extend(self.carried.iter().cloned());
            ops.extend(
                queue
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
            let mut queue = self.shared.queue.lock();
            if queue.overflows == overflows {
                queue.full_pending = false;
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
            .transport
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

#[cfg(test)]
mod tests;

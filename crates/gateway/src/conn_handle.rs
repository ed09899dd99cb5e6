//! The part of a connection that the rest of the node holds on to.
//!
//! A [`ConnHandle`] is shared (in an `Arc`) by the hub's room member lists,
//! the session and user indexes and the heartbeat shards. It carries who the
//! connection is, its outbox, and two timestamps for liveness; everything
//! else about the connection lives in its own task.

use std::sync::atomic::{
    AtomicU64, AtomicU8, Ordering::AcqRel, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
};

use arc_swap::ArcSwapOption;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use roomcast_protocol::{Codec, Member, ServerFrame};

use crate::auth::Identity;
use crate::direct_write::{Direct, Fd, Wire};
use crate::outbox::{Claim, Outbox, PushError};

/// Milliseconds since the node started: a cheap, monotonic clock shared by
/// the connections and the heartbeat tickers.
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// In C layout, so that what the heartbeat reads and writes at every visit
/// (the id, the two timestamps and the wire) sits right after the `Arc`'s
/// counts, in the same cache line or two: an idle node's heartbeat is one
/// cache miss per visit, not three.
#[repr(C)]
pub struct ConnHandle {
    pub id: u64,
    /// Last time (`now_ms`) any frame arrived from the client.
    pub last_seen: AtomicU64,
    /// When the last unanswered ping was queued (0: none outstanding).
    pub ping_sent: AtomicU64,
    /// The socket, for the heartbeat's direct pings.
    pub wire: Wire,
    /// The heartbeat tick this connection is filed under; an older entry
    /// of it in the wheel is stale.
    pub filed_tick: AtomicU64,
    /// When the connection's token runs out (`now_ms`, its `exp` plus
    /// [`EXPIRY_GRACE_MS`]; 0: never), and in [`REFRESH_ASKED`] whether the
    /// refresh proxy was asked for this deadline. Read by the heartbeat.
    expiry: AtomicU64,
    /// The identity of the last `refresh`, when there was one: its room
    /// patterns replace the first token's.
    refreshed: ArcSwapOption<Identity>,
    /// What becomes of the session when the connection ends
    /// ([`SessionFate`]).
    fate: AtomicU8,
    pub codec: Codec,
    pub session: Arc<str>,
    pub identity: Identity,
    pub outbox: Outbox,
}

impl ConnHandle {
    pub fn new(
        id: u64,
        session: Arc<str>,
        identity: Identity,
        codec: Codec,
        outbox: Outbox,
    ) -> Self {
        ConnHandle {
            id,
            session,
            identity,
            codec,
            outbox,
            last_seen: AtomicU64::new(now_ms()),
            ping_sent: AtomicU64::new(0),
            fate: AtomicU8::new(0),
            wire: Wire::none(),
            expiry: AtomicU64::new(0),
            filed_tick: AtomicU64::new(0),
            refreshed: ArcSwapOption::empty(),
        }
    }

    /// The token's expiry (Unix seconds) sets the connection's deadline.
    pub fn with_expiry(self, expires_at: Option<u64>) -> Self {
        self.expiry.store(deadline_of(expires_at), Relaxed);
        self
    }

    /// The connection's deadline (`now_ms`), 0 when it has none, and
    /// whether the refresh proxy was asked for it.
    pub fn expiry(&self) -> (u64, bool) {
        let e = self.expiry.load(Acquire);
        (e & !REFRESH_ASKED, e & REFRESH_ASKED != 0)
    }

    /// Marks the refresh proxy asked for `deadline`; false when the
    /// deadline changed meanwhile or it was asked already.
    pub fn mark_refresh_asked(&self, deadline: u64) -> bool {
        self.expiry
            .compare_exchange(deadline, deadline | REFRESH_ASKED, AcqRel, Acquire)
            .is_ok()
    }

    /// A successful refresh: the new token's identity (same user) and
    /// expiry replace the old ones.
    pub fn refresh(&self, identity: Identity) {
        self.expiry.store(deadline_of(identity.expires_at), Release);
        self.refreshed.store(Some(Arc::new(identity)));
    }

    /// A refresh proxy's answer: the token's new expiry.
    pub fn extend(&self, expires_at: u64) {
        let mut identity = self.current_identity();
        identity.expires_at = Some(expires_at);
        self.refresh(identity);
    }

    /// `f` of the identity in force: the last refresh's, else the first one.
    fn in_force<R>(&self, f: impl FnOnce(&Identity) -> R) -> R {
        match &*self.refreshed.load() {
            Some(refreshed) => f(refreshed),
            None => f(&self.identity),
        }
    }

    /// The identity in force (what a park keeps).
    pub fn current_identity(&self) -> Identity {
        self.in_force(Identity::clone)
    }

    /// When the token in force expires (Unix seconds).
    pub fn token_expires_at(&self) -> Option<u64> {
        self.in_force(|i| i.expires_at)
    }

    pub fn may_join(&self, room: &str) -> bool {
        self.in_force(|i| i.may_join(room))
    }

    pub fn may_publish_unjoined(&self, room: &str) -> bool {
        self.in_force(|i| i.may_publish_unjoined(room))
    }

    /// Lets the hub (and, with `pings`, the heartbeat) write straight to
    /// socket `fd` (see [`Wire`]).
    pub fn with_socket(mut self, fd: Option<Fd>, pings: bool) -> Self {
        self.wire = Wire::new(fd, pings);
        self
    }

    pub fn user(&self) -> &Arc<str> {
        &self.identity.user
    }

    /// This connection as others see it.
    pub fn member(&self) -> Member {
        Member {
            user: self.identity.user.to_string(),
            session: self.session.to_string(),
            info: self.identity.info.clone(),
        }
    }

    /// Encodes and queues a frame made for this connection alone.
    pub fn send(&self, frame: &ServerFrame) -> Result<(), PushError> {
        match self.codec.encode(frame) {
            Ok(bytes) => self.outbox.push(bytes),
            Err(e) => {
                tracing::error!(error = %e, kind = frame.kind(), "cannot encode frame");
                Ok(())
            }
        }
    }

    /// Queues a frame already encoded in this connection's codec.
    pub fn send_encoded(&self, bytes: Bytes) -> Result<(), PushError> {
        self.outbox.push(bytes)
    }

    /// Sends a frame shared by many connections: written straight to the
    /// socket (`ws_frame`, the WebSocket frame around `bytes`) when the
    /// connection is between writes with nothing queued, else queued.
    /// Returns whether it went directly.
    pub fn deliver(&self, bytes: &Bytes, ws_frame: Option<&Bytes>) -> Result<bool, PushError> {
        let Some(ws_frame) = ws_frame else {
            return self.outbox.push(bytes.clone()).map(|()| false);
        };
        if self
            .outbox
            .direct_or_push(bytes, || self.wire.claim_direct())?
            == Claim::Queued
        {
            return Ok(false);
        }
        match self.wire.send_claimed(ws_frame, || ws_frame.clone()) {
            Direct::Sent => Ok(true),
            Direct::Half => {
                self.outbox.finish_direct();
                Ok(true)
            }
            // The socket took nothing (its buffer is full): the task writes
            // it once the socket can take more.
            Direct::NotSent => self.outbox.push(bytes.clone()).map(|()| false),
        }
    }

    pub fn touch(&self) {
        self.last_seen.store(now_ms(), Relaxed);
    }

    /// The teardown's turn to park the session: false when it must not be
    /// parked (taken over, or disconnected by the API), else the session
    /// is marked as being parked.
    pub fn begin_park(&self) -> bool {
        self.fate
            .fetch_update(AcqRel, Acquire, |f| {
                (f & FORGET == 0).then_some(f | PARKING)
            })
            .is_ok()
    }

    /// The park begun by [`ConnHandle::begin_park`] is over (done or failed).
    pub fn end_park(&self) {
        self.fate.fetch_or(PARKED, AcqRel);
    }

    /// A resume takes the session over from this connection: unless the
    /// teardown is parking it already, it will not be parked.
    /// A session disconnected by the API is not taken over: it has ended.
    pub fn take_over(&self) -> SessionFate {
        let before = self
            .fate
            .fetch_update(AcqRel, Acquire, |f| {
                (f & (PARKING | KICKED) == 0).then_some(f | FORGET)
            })
            .unwrap_or_else(|f| f);
        SessionFate::of(before)
    }

    /// The API disconnects this connection: its session has ended and is
    /// not parked, or if the teardown is parking it already, the teardown
    /// takes the parked copy back out ([`ConnHandle::must_discard`]).
    pub fn disconnect(&self) {
        self.fate
            .fetch_update(AcqRel, Acquire, |f| {
                Some(if f & PARKING == 0 {
                    f | KICKED | FORGET
                } else {
                    f | KICKED | DISCARD
                })
            })
            .ok();
    }

    /// The session resumed on another node (its presence service still
    /// listed it here): unless the teardown is parking it already, it is
    /// not parked, and the teardown tells the presence service nothing
    /// about it (the other node holds it now).
    pub fn moved(&self) {
        self.fate
            .fetch_update(AcqRel, Acquire, |f| {
                (f & PARKING == 0).then_some(f | FORGET | MOVED)
            })
            .ok();
    }

    /// Whether the session went on on another node ([`ConnHandle::moved`]).
    pub fn has_moved(&self) -> bool {
        self.fate.load(Acquire) & MOVED != 0
    }

    /// Whether the session was disconnected while its teardown was parking
    /// it: the parked copy must go.
    pub fn must_discard(&self) -> bool {
        self.fate.load(Acquire) & DISCARD != 0
    }

    pub fn fate(&self) -> SessionFate {
        SessionFate::of(self.fate.load(Acquire))
    }
}

/// How long after its token's `exp` a connection is closed, at most
/// (the heartbeat's tick may add up to two ticks).
pub const EXPIRY_GRACE_MS: u64 = 1_000;

/// The flag bit of [`ConnHandle::expiry`].
const REFRESH_ASKED: u64 = 1 << 63;

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The `now_ms` deadline of a token expiring at `expires_at` (Unix
/// seconds), plus the grace; 0 for none. Never 0 for a token (an expired
/// one gets a deadline of 1: due at once).
fn deadline_of(expires_at: Option<u64>) -> u64 {
    let Some(exp) = expires_at else { return 0 };
    let left = exp
        .saturating_mul(1000)
        .saturating_add(EXPIRY_GRACE_MS)
        .saturating_sub(unix_ms());
    now_ms().saturating_add(left).clamp(1, REFRESH_ASKED - 1)
}

/// Bits of [`ConnHandle::fate`].
const FORGET: u8 = 1;
const PARKING: u8 = 2;
const PARKED: u8 = 4;
const DISCARD: u8 = 8;
const KICKED: u8 = 16;
const MOVED: u8 = 32;

/// Where a connection's session stands, for a resume that finds the
/// connection still holding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionFate {
    /// Still held (or already given up without parking).
    Held,
    /// Disconnected by the API: it cannot be resumed.
    Ended,
    /// The teardown is parking it: the parked copy is the one to resume.
    Parking,
    /// The teardown parked it (or tried to).
    Parked,
}

impl SessionFate {
    fn of(bits: u8) -> SessionFate {
        if bits & KICKED != 0 {
            SessionFate::Ended
        } else if bits & PARKED != 0 {
            SessionFate::Parked
        } else if bits & PARKING != 0 {
            SessionFate::Parking
        } else {
            SessionFate::Held
        }
    }
}

/// A frame encoded lazily, at most once per codec, for many connections.
pub struct SharedFrame<'a> {
    frame: &'a ServerFrame,
    encoded: [Option<Bytes>; 2],
}

impl<'a> SharedFrame<'a> {
    pub fn new(frame: &'a ServerFrame) -> Self {
        SharedFrame {
            frame,
            encoded: [None, None],
        }
    }

    pub fn bytes(&mut self, codec: Codec) -> Option<Bytes> {
        let slot = &mut self.encoded[codec.index()];
        if slot.is_none() {
            *slot = codec.encode(self.frame).ok();
        }
        slot.clone()
    }
}

//! The local hub: which connections of this node are in which room, and
//! which connection holds which session and user.
//!
//! Rooms are spread over shards, each behind its own lock, so publishes to
//! different rooms never contend. Delivering a message encodes it at most
//! once per codec and hands the same bytes to every member's outbox; pushes
//! never block, so a slow member costs the others nothing.
//!
//! Joining is a three-step handshake with the broker, which is what makes
//! recovery exact: the member is first added in a *buffering* state (live
//! messages are kept aside), then history is read, then [`Hub::activate`]
//! releases the buffered messages newer than the last one sent. The read
//! and the node's pub/sub are two connections to Redis, so the read can see
//! offsets the node has not dispatched yet: until the first message newer
//! than its read arrives, the member is *catching up* and skips the ones it
//! already has. Every offset arrives once, in order, whether it came from
//! history or live.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;
use roomcast_broker::{Delivery, Position, RoomMessage};
use roomcast_protocol::envelope::{Envelope, Kind};
use roomcast_protocol::{close, Data, Member, ServerFrame, Target};
use tokio::sync::OnceCell;

use crate::conn_handle::{ConnHandle, SessionFate, SharedFrame};
use crate::metrics::Metrics;
use crate::outbox::PushError;

const SHARDS: usize = 64;

enum MemberState {
    Live,
    /// Joined, history not yet sent: live messages wait here.
    Buffering(Vec<Arc<RoomMessage>>),
    /// History sent up to this position, which the node has not dispatched
    /// yet: offsets up to it are skipped; the last of them, a newer one or
    /// one of another epoch makes the member live. (Boxed: members are many
    /// and this state is brief, so it must not make every one bigger.)
    CatchingUp(Box<Position>),
}

struct Membership {
    conn: Arc<ConnHandle>,
    presence: bool,
    state: MemberState,
}

struct Room {
    members: Vec<Membership>,
    /// Resolves once this node is subscribed to the room in the broker.
    subscribed: Arc<OnceCell<()>>,
}

/// What [`Hub::add_member`] found.
pub enum Added {
    /// Added in buffering state; await `subscribed` before reading history.
    /// `first`: the room had no member on this node before.
    New {
        subscribed: Arc<OnceCell<()>>,
        first: bool,
    },
    /// The connection was already a member.
    Already,
}

pub struct Hub {
    shards: Vec<Mutex<HashMap<Arc<str>, Room>>>,
    sessions: Mutex<HashMap<Arc<str>, Arc<ConnHandle>>>,
    users: Mutex<HashMap<Arc<str>, Vec<Arc<ConnHandle>>>>,
    metrics: Arc<Metrics>,
    /// Messages a buffering member may hold before it counts as a slow consumer.
    max_buffered: usize,
    /// Room messages whose encoded frame is shorter than this may be
    /// written straight to a member's socket (0: never).
    direct_below: usize,
    /// Pub/sub messages waiting behind the one being delivered: direct
    /// writes (one system call per member and message, on the dispatcher's
    /// thread) only while none wait; behind a backlog, the members' tasks
    /// write, in parallel and several frames per write.
    backlog: AtomicUsize,
    /// Notified whenever a teardown's park ends.
    parks_ended: tokio::sync::Notify,
    /// What a disconnect sent by another node leaves for the node's session
    /// store to end: a session this node no longer lists, or a user.
    discards: OnceLock<tokio::sync::mpsc::UnboundedSender<Target>>,
}

/// The key of a `Disconnect` envelope's `data` that names sessions
/// resumed on the sending node: `{"moved": [session, ...]}`, with no
/// `target` (a node older than this ignores it).
pub const MOVED: &str = "moved";

/// Whether `conn_id` is a member of `room` (buffering or not) in a shard.
fn has_member(shard: &HashMap<Arc<str>, Room>, room: &str, conn_id: u64) -> bool {
    shard
        .get(room)
        .is_some_and(|r| r.members.iter().any(|m| m.conn.id == conn_id))
}

fn shard_of(room: &str) -> usize {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in room.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    (h as usize) % SHARDS
}

impl Hub {
    /// `direct_below`: room messages whose encoded frame is shorter may be
    /// written straight to members' sockets; 0 turns direct writes off.
    pub fn new(metrics: Arc<Metrics>, max_buffered: usize, direct_below: usize) -> Self {
        Hub {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            sessions: Mutex::new(HashMap::new()),
            users: Mutex::new(HashMap::new()),
            metrics,
            max_buffered,
            direct_below,
            backlog: AtomicUsize::new(0),
            parks_ended: tokio::sync::Notify::new(),
            discards: OnceLock::new(),
        }
    }

    /// Messages shorter than this may be written straight to a socket
    /// (0: never).
    pub fn direct_below(&self) -> usize {
        self.direct_below
    }

    // ---- connections -------------------------------------------------

    /// Makes a connection reachable by its session and user. Returns the
    /// connection that held the session before, if any (a resume that raced
    /// the old socket's death). `announce` runs while the session table is
    /// locked: what it tells the presence service (`connect`) is ordered
    /// against what an older connection of the session tells in
    /// [`Hub::with_holder`], so the older one's `disconnect` can never
    /// follow the newer one's `connect`.
    pub fn register(
        &self,
        conn: &Arc<ConnHandle>,
        announce: impl FnOnce(),
    ) -> Option<Arc<ConnHandle>> {
        let old = {
            let mut sessions = self.sessions.lock();
            let old = sessions.insert(conn.session.clone(), conn.clone());
            announce();
            old
        };
        self.users
            .lock()
            .entry(conn.user().clone())
            .or_default()
            .push(conn.clone());
        old
    }

    pub fn unregister(&self, conn: &Arc<ConnHandle>) {
        {
            let mut sessions = self.sessions.lock();
            if sessions.get(&conn.session).is_some_and(|c| c.id == conn.id) {
                sessions.remove(&conn.session);
            }
        }
        let mut users = self.users.lock();
        if let Some(list) = users.get_mut(conn.user()) {
            list.retain(|c| c.id != conn.id);
            if list.is_empty() {
                users.remove(conn.user());
            }
        }
    }

    pub fn by_session(&self, session: &str) -> Option<Arc<ConnHandle>> {
        self.sessions.lock().get(session).cloned()
    }

    /// Runs `f` with the connection now holding `conn`'s session, if it is
    /// another one (a resume took the session over), while the session
    /// table is locked: see [`Hub::register`].
    pub fn with_holder<R>(
        &self,
        conn: &ConnHandle,
        f: impl FnOnce(Option<&Arc<ConnHandle>>) -> R,
    ) -> R {
        let sessions = self.sessions.lock();
        f(sessions.get(&conn.session).filter(|c| c.id != conn.id))
    }

    /// Every connection past `hello` (a snapshot).
    pub fn connections(&self) -> Vec<Arc<ConnHandle>> {
        self.sessions.lock().values().cloned().collect()
    }

    /// Every (session, room) membership on this node (a snapshot).
    pub fn memberships(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for shard in &self.shards {
            for (room, r) in shard.lock().iter() {
                for m in &r.members {
                    out.push((m.conn.session.to_string(), room.to_string()));
                }
            }
        }
        out
    }

    /// The local connections a target names (`None`: the target is malformed).
    /// The sessions of `user`'s connections on this node.
    pub fn user_sessions(&self, user: &str) -> Vec<Arc<str>> {
        let users = self.users.lock();
        users
            .get(user)
            .map(|conns| conns.iter().map(|c| c.session.clone()).collect())
            .unwrap_or_default()
    }

    pub fn targets(&self, to: &Target) -> Option<Vec<Arc<ConnHandle>>> {
        self.targets_marked(to, |_| {})
    }

    /// [`Hub::targets`], with `mark` run on each connection while the
    /// table it was found in is still locked: a teardown that unregisters
    /// the connection afterwards sees what `mark` set.
    fn targets_marked(
        &self,
        to: &Target,
        mark: impl Fn(&ConnHandle),
    ) -> Option<Vec<Arc<ConnHandle>>> {
        let conns: Vec<Arc<ConnHandle>> = match (&to.user, &to.session) {
            (Some(user), None) => {
                let users = self.users.lock();
                let conns = users.get(user.as_str()).cloned().unwrap_or_default();
                conns.iter().for_each(|c| mark(c));
                conns
            }
            (None, Some(session)) => {
                let sessions = self.sessions.lock();
                let conn = sessions.get(session.as_str()).cloned();
                conn.iter().for_each(|c| mark(c));
                conn.into_iter().collect()
            }
            _ => return None,
        };
        Some(conns)
    }

    /// Queues a `direct` frame to the local connections of `to`; returns how
    /// many it reached.
    pub fn deliver_direct(&self, to: &Target, data: Data, from: Option<Member>) -> usize {
        let targets = self.targets(to).unwrap_or_default();
        if targets.is_empty() {
            return 0;
        }
        let frame = ServerFrame::Direct { data, from };
        let mut shared = SharedFrame::new(&frame);
        let mut delivered = 0;
        for conn in targets {
            if let Some(bytes) = shared.bytes(conn.codec) {
                if conn.send_encoded(bytes).is_ok() {
                    delivered += 1;
                }
            }
        }
        self.metrics.direct_sent.add(delivered as u64);
        self.metrics.frames_out_by_kind("direct", delivered as u64);
        delivered
    }

    /// Closes the local connections of `to` with 1000; their sessions
    /// cannot be resumed. Each is marked ([`ConnHandle::disconnect`]) while
    /// the table it was found in is locked, so a teardown that unregisters
    /// it afterwards sees the mark. Returns how many were closed.
    pub fn disconnect(&self, to: &Target) -> usize {
        let conns = self
            .targets_marked(to, ConnHandle::disconnect)
            .unwrap_or_default();
        for conn in &conns {
            conn.outbox.close(close::NORMAL, "disconnected by server");
        }
        conns.len()
    }

    /// `session` resumed on node `to`: its connection here, if any, is
    /// closed and neither parks it nor tells the presence service of it.
    pub fn moved(&self, session: &str, to: &str) {
        let target = Target {
            user: None,
            session: Some(session.to_string()),
        };
        for conn in self
            .targets_marked(&target, ConnHandle::moved)
            .unwrap_or_default()
        {
            tracing::debug!(session, node = to, "session resumed on another node");
            conn.outbox
                .close(close::NORMAL, "session resumed on another connection");
        }
    }

    /// Waits until `conn`'s teardown has ended the park it began, within
    /// `patience` (longer than a park may take).
    pub async fn await_park(&self, conn: &ConnHandle, patience: Duration) {
        let _ = tokio::time::timeout(patience, async {
            loop {
                let notified = self.parks_ended.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if conn.fate() != SessionFate::Parking {
                    return;
                }
                notified.await;
            }
        })
        .await;
    }

    /// Where [`Delivery::control`] sends the sessions whose parked copy must
    /// go, and the users whose parked sessions must (the node ends them in
    /// its session store).
    pub fn set_discards(&self, sender: tokio::sync::mpsc::UnboundedSender<Target>) {
        let _ = self.discards.set(sender);
    }

    /// Wakes the resumes waiting for a park to end ([`Hub::await_park`]).
    pub fn park_ended(&self, conn: &ConnHandle) {
        conn.end_park();
        self.parks_ended.notify_waiters();
    }

    // ---- rooms --------------------------------------------------------

    /// Adds `conn` to `room` in buffering state.
    pub fn add_member(&self, room: &str, conn: &Arc<ConnHandle>, presence: bool) -> Added {
        let mut shard = self.shards[shard_of(room)].lock();
        let (entry, first) = match shard.get_mut(room) {
            Some(r) => (r, false),
            None => {
                self.metrics.rooms.inc();
                let r = shard.entry(Arc::from(room)).or_insert_with(|| Room {
                    members: Vec::new(),
                    subscribed: Arc::new(OnceCell::new()),
                });
                (r, true)
            }
        };
        if entry.members.iter().any(|m| m.conn.id == conn.id) {
            return Added::Already;
        }
        entry.members.push(Membership {
            conn: conn.clone(),
            presence,
            state: MemberState::Buffering(Vec::new()),
        });
        self.metrics.subscriptions.inc();
        Added::New {
            subscribed: entry.subscribed.clone(),
            first,
        }
    }

    /// Ends buffering for `conn` in `room`, whose history was sent up to
    /// `sent` (the position its join read): queues the buffered messages
    /// after it, and skips the ones up to it that the node dispatches later.
    pub fn activate(&self, room: &str, conn_id: u64, sent: &Position) {
        let mut shard = self.shards[shard_of(room)].lock();
        let Some(r) = shard.get_mut(room) else { return };
        let Some(m) = r.members.iter_mut().find(|m| m.conn.id == conn_id) else {
            return;
        };
        let MemberState::Buffering(buffered) = &mut m.state else {
            return;
        };
        let buffered = std::mem::take(buffered);
        // Messages reach the hub in offset order: once one at or past the
        // read position has arrived, nothing the member has can come again.
        let caught_up = buffered
            .last()
            .is_some_and(|last| last.offset >= sent.offset || *last.epoch != *sent.epoch);
        m.state = if caught_up || sent.offset == 0 {
            MemberState::Live
        } else {
            MemberState::CatchingUp(Box::new(sent.clone()))
        };
        for msg in buffered.into_iter().filter(|msg| msg.offset > sent.offset) {
            if m.conn.send_encoded(msg.frame(m.conn.codec)).is_err() {
                break;
            }
            self.metrics.deliveries.inc();
        }
    }

    /// Removes `conn` from `room`. Returns `None` if it was not a member,
    /// else whether the room is now empty on this node (time to unsubscribe).
    pub fn remove_member(&self, room: &str, conn_id: u64) -> Option<bool> {
        let mut shard = self.shards[shard_of(room)].lock();
        let r = shard.get_mut(room)?;
        let i = r.members.iter().position(|m| m.conn.id == conn_id)?;
        r.members.swap_remove(i);
        self.metrics.subscriptions.dec();
        if r.members.is_empty() {
            shard.remove(room);
            self.metrics.rooms.dec();
            Some(true)
        } else {
            Some(false)
        }
    }

    /// Runs `f` unless `conn_id` is a member of `room` (buffering or not),
    /// while the room's shard is locked: what `f` tells is ordered before
    /// anything that connection's later join of the room tells.
    pub fn unless_member(&self, room: &str, conn_id: u64, f: impl FnOnce()) {
        if !has_member(&self.shards[shard_of(room)].lock(), room, conn_id) {
            f();
        }
    }

    pub fn is_member(&self, room: &str, conn_id: u64) -> bool {
        has_member(&self.shards[shard_of(room)].lock(), room, conn_id)
    }

    /// The local members of a room.
    pub fn members(&self, room: &str) -> Vec<Member> {
        self.shards[shard_of(room)]
            .lock()
            .get(room)
            .map(|r| r.members.iter().map(|m| m.conn.member()).collect())
            .unwrap_or_default()
    }

    /// Sends `frame` to the members of `room` that asked for presence events,
    /// except the connection `except`.
    pub fn presence_event(&self, room: &str, frame: &ServerFrame, except: u64) {
        let mut shared = SharedFrame::new(frame);
        let shard = self.shards[shard_of(room)].lock();
        let Some(r) = shard.get(room) else { return };
        let mut sent = 0;
        for m in r
            .members
            .iter()
            .filter(|m| m.presence && m.conn.id != except)
        {
            if let Some(bytes) = shared.bytes(m.conn.codec) {
                if m.conn.send_encoded(bytes).is_ok() {
                    sent += 1;
                }
            }
        }
        self.metrics.frames_out_by_kind(frame.kind(), sent);
    }

    /// Number of rooms with local members.
    pub fn room_count(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }
}

/// The span of a delivery whose publish was traced on another node (none
/// when this node does not trace, or the publish was not sampled).
fn remote_span(kind: &'static str, trace: Option<&str>, room: &str) -> tracing::Span {
    match trace {
        Some(parent) if crate::telemetry::enabled() => {
            let span = tracing::info_span!("deliver", kind, room);
            crate::telemetry::set_remote_parent(&span, parent);
            span
        }
        _ => tracing::Span::none(),
    }
}

impl Delivery for Hub {
    fn control(&self, envelope: Envelope) {
        let span = remote_span("control", envelope.trace.as_deref(), &envelope.room);
        let _entered = span.enter();
        if matches!(envelope.kind, Kind::Direct | Kind::Disconnect) {
            self.metrics.control_received.inc();
        }
        match envelope.kind {
            Kind::PresenceJoin | Kind::PresenceLeave => {
                let Some(member) = envelope.member else {
                    return;
                };
                // The member's own connection is not told about itself.
                let except = self.by_session(&member.session).map(|c| c.id).unwrap_or(0);
                let room = envelope.room;
                let frame = if envelope.kind == Kind::PresenceJoin {
                    ServerFrame::PresenceJoin {
                        room: room.clone(),
                        member,
                    }
                } else {
                    ServerFrame::PresenceLeave {
                        room: room.clone(),
                        member,
                    }
                };
                self.presence_event(&room, &frame, except);
            }
            Kind::Direct => {
                if let Some(to) = &envelope.target {
                    self.deliver_direct(to, envelope.data.unwrap_or(Data::Null), envelope.from);
                }
            }
            Kind::Disconnect if envelope.target.is_none() => {
                let moved = envelope.data.as_ref().and_then(|d| d.get(MOVED));
                for session in moved.and_then(Data::as_array).into_iter().flatten() {
                    if let Some(session) = session.as_str() {
                        self.moved(session, &envelope.node);
                    }
                }
            }
            Kind::Disconnect => {
                if let Some(to) = &envelope.target {
                    // A session not listed here any more: its teardown may
                    // have parked it after the sending node dropped the
                    // parked copy. A user's connections that went away
                    // before this came may have been parked after the
                    // sending node ended the user's parked sessions: this
                    // node ends them again once its parks have landed.
                    let found = self.disconnect(to);
                    if let Some(discards) = self.discards.get() {
                        if to.user.is_some() || (to.session.is_some() && found == 0) {
                            let _ = discards.send(to.clone());
                        }
                    }
                }
            }
            Kind::Message => {}
        }
    }

    fn backlog(&self, waiting: usize) {
        self.backlog.store(waiting, Relaxed);
    }

    fn deliver(&self, msg: Arc<RoomMessage>) {
        let span = remote_span("message", msg.trace.as_deref(), &msg.room);
        let _entered = span.enter();
        let mut shard = self.shards[shard_of(&msg.room)].lock();
        let Some(room) = shard.get_mut(&*msg.room) else {
            return;
        };
        let mut frames = [None, None];
        // The WebSocket frame around each, for direct writes (None inside:
        // too large to go directly).
        let mut ws_frames: [Option<Option<bytes::Bytes>>; 2] = [None, None];
        let mut delivered = 0u64;
        let mut direct = 0u64;
        let direct_now = self.direct_below > 0 && self.backlog.load(Relaxed) == 0;
        for m in room.members.iter_mut() {
            if let MemberState::CatchingUp(sent) = &m.state {
                let already_sent = msg.offset <= sent.offset && *msg.epoch == *sent.epoch;
                if !already_sent || msg.offset == sent.offset {
                    m.state = MemberState::Live;
                }
                if already_sent {
                    continue; // sent from history
                }
            }
            match &mut m.state {
                MemberState::Live | MemberState::CatchingUp(_) => {
                    let codec = m.conn.codec;
                    let bytes = frames[codec.index()].get_or_insert_with(|| msg.frame(codec));
                    let ws_frame = if direct_now && m.conn.wire.has_socket() {
                        ws_frames[codec.index()]
                            .get_or_insert_with(|| {
                                (bytes.len() < self.direct_below).then(|| {
                                    crate::direct_write::data_frame(codec.is_binary(), bytes)
                                })
                            })
                            .as_ref()
                    } else {
                        None
                    };
                    match m.conn.deliver(bytes, ws_frame) {
                        Ok(went_direct) => {
                            delivered += 1;
                            direct += u64::from(went_direct);
                        }
                        Err(PushError::Overflow) => self.metrics.outbound_overflows.inc(),
                        Err(PushError::Closing) => {}
                    }
                }
                MemberState::Buffering(buffer) => {
                    if buffer.len() >= self.max_buffered {
                        m.conn
                            .outbox
                            .close(roomcast_protocol::close::SLOW_CONSUMER, "slow consumer");
                        self.metrics.outbound_overflows.inc();
                    } else {
                        buffer.push(msg.clone());
                    }
                }
            }
        }
        drop(shard);
        self.metrics.deliveries.add(delivered);
        self.metrics.deliveries_direct.add(direct);
        self.metrics.frames_out_by_kind("message", delivered);
        let now = roomcast_broker::message::now_us();
        self.metrics
            .publish_to_deliver
            .observe_us(now.saturating_sub(msg.published_at_us));
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use crate::auth::Identity;
    use crate::outbox::Outbox;
    use roomcast_protocol::Codec;
    use std::io::Read;
    use std::os::fd::AsRawFd;

    fn message(offset: u64) -> Arc<RoomMessage> {
        Arc::new(RoomMessage::new(
            Arc::from("r"),
            offset,
            Arc::from("e"),
            serde_json::json!({ "n": offset }),
            None,
            0,
        ))
    }

    /// Reads one unmasked server frame; returns its payload.
    fn read_frame(client: &mut std::net::TcpStream) -> Vec<u8> {
        let mut head = [0u8; 2];
        client.read_exact(&mut head).unwrap();
        assert_eq!(head[0], 0x81, "a final text frame");
        let len = head[1] as usize;
        assert!(len < 126);
        let mut payload = vec![0u8; len];
        client.read_exact(&mut payload).unwrap();
        payload
    }

    #[tokio::test]
    async fn the_fan_out_writes_directly_only_while_no_message_waits_behind() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let metrics = Arc::new(Metrics::default());
        let hub = Hub::new(metrics.clone(), 100, 1024);
        let conn = Arc::new(
            ConnHandle::new(
                1,
                Arc::from("s1"),
                Identity::anonymous("s1"),
                Codec::Json,
                Outbox::new(100, 1 << 20),
            )
            .with_socket(Some(server.as_raw_fd()), true),
        );
        conn.wire.enable();
        assert!(matches!(
            hub.add_member("r", &conn, false),
            Added::New { .. }
        ));
        hub.activate(
            "r",
            1,
            &Position {
                offset: 0,
                epoch: Arc::from("e"),
            },
        );

        hub.deliver(message(1));
        assert_eq!(metrics.deliveries_direct.get(), 1);
        assert_eq!(read_frame(&mut client), message(1).frame(Codec::Json));

        // A backlog: queued for the connection's task instead.
        hub.backlog(3);
        hub.deliver(message(2));
        assert_eq!(metrics.deliveries_direct.get(), 1);
        assert_eq!(metrics.deliveries.get(), 2);
        let queued = conn.outbox.next().await.unwrap();
        assert_eq!(queued.len(), 1);

        // No backlog, but that frame is not written yet: queued behind it.
        hub.backlog(0);
        hub.deliver(message(3));
        assert_eq!(metrics.deliveries_direct.get(), 1);
        assert_eq!(conn.outbox.next().await.unwrap().len(), 1);
        drop(server);
    }
}

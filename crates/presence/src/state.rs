//! The presence state machine: nodes and their leases, sessions and who owns
//! them, rooms and their members, users and their sessions.
//!
//! It is pure: no clock (every call gets `now`), no network, no locks. Each
//! change pushes the events it causes onto a `Vec<Event>`, in the order they
//! happened: presence joins and leaves (published on the room's channel),
//! and, for the webhooks, rooms occupied and vacated and sessions ended. The
//! caller publishes them, so the rules that keep presence from flapping are
//! all here and are unit-tested here:
//!
//! - a join of a session already in the room, a resume (a `connect` of a
//!   known session from any node) and a handed-off session that comes back
//!   within its grace time cause no event;
//! - a node whose lease expires loses its sessions, with leave events,
//!   except those in handoff grace, which follow the grace rule;
//! - a full sync from a known node applies the difference, with events; from
//!   a node this process does not know while it is rebuilding after its own
//!   restart, silently (nothing changed for clients);
//! - a room is occupied by its first member and vacated by its last, across
//!   all nodes; a session ends when it is disconnected (`closed`), when its
//!   handoff grace runs out (`expired`) or when its node's lease does
//!   (`node_lost`), never when it is resumed.
//!
//! Ops from a node about a session it does not own (any more) are ignored:
//! a late `disconnect` from the node that handed a session over must not
//! remove it from under the node that took it.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use roomcast_protocol::{Data, Member};

use crate::api::{Op, Owner, SyncRequest};

/// Longest session, user or room name accepted, in bytes.
pub const MAX_NAME_BYTES: usize = 1024;
/// Longest lease or handoff grace honoured; longer ones are cut to this.
pub const MAX_DURATION: Duration = Duration::from_secs(3600);

/// A peer-given number of milliseconds, bounded so `now + it` cannot overflow.
fn bounded_ms(ms: u64) -> Duration {
    Duration::from_millis(ms).min(MAX_DURATION)
}

/// A change of the presence picture. `Join` and `Leave` are published on
/// the room's channel; every kind goes to the webhooks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `member` entered `room`.
    Join { room: String, member: Member },
    /// `member` left `room` (it left, ended, or was purged).
    Leave { room: String, member: Member },
    /// `room` got its first member, cluster-wide (just before its `Join`).
    Occupied { room: String },
    /// `room` lost its last member (just after its `Leave`).
    Vacated { room: String },
    /// `member`'s session is gone for good (after its `Leave`s).
    SessionEnd { member: Member, reason: EndReason },
}

/// Why a session ended: the webhooks' `session_end` reason, one type for
/// both ([`roomcast_hooks::webhook::EndReason`]).
pub use roomcast_hooks::webhook::EndReason;

/// What a sync did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncOutcome {
    /// The node is unknown (or another incarnation): nothing was applied.
    pub need_full: bool,
    /// Ops that changed or confirmed state.
    pub applied: usize,
    /// Ops skipped: invalid, stale (from a node that does not own the
    /// session), or already applied (a re-sent batch).
    pub ignored: usize,
    /// A full sync applied without events (rebuild after a restart).
    pub silent: bool,
    /// A full sync that replaced an older incarnation of the node.
    pub replaced_incarnation: bool,
}

/// What a sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sweep {
    /// Nodes whose lease expired.
    pub nodes_purged: usize,
    /// Sessions removed because their node's lease expired.
    pub sessions_purged: usize,
    /// Sessions removed because their handoff grace ended.
    pub handoffs_expired: usize,
}

/// Sizes, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub nodes: usize,
    pub sessions: usize,
    pub rooms: usize,
    pub handoffs: usize,
}

#[derive(Debug)]
struct Session {
    user: String,
    info: Option<Data>,
    node: String,
    rooms: BTreeSet<String>,
    /// Set while the session waits, after a handoff, for a `connect`.
    handoff_until: Option<Instant>,
}

#[derive(Debug)]
struct NodeState {
    incarnation: String,
    lease_until: Instant,
    sessions: HashSet<String>,
    /// Sequence number of the next op this node will send.
    next_seq: Option<u64>,
}

/// The whole presence picture of the cluster.
#[derive(Debug)]
pub struct State {
    nodes: HashMap<String, NodeState>,
    sessions: HashMap<String, Session>,
    rooms: HashMap<String, BTreeSet<String>>,
    users: HashMap<String, BTreeSet<String>>,
    handoffs: HashSet<String>,
    /// Until then, a node never seen before is assumed to be one this
    /// process forgot by restarting, and its full sync is applied silently.
    rebuild_until: Instant,
}

/// The desired state of one session in a full sync.
struct Desired {
    user: String,
    info: Option<Data>,
    rooms: BTreeSet<String>,
}

impl State {
    /// An empty state for a process started at `now`; nodes that first sync
    /// within `rebuild_window` are rebuilt silently.
    pub fn new(now: Instant, rebuild_window: Duration) -> State {
        State {
            nodes: HashMap::new(),
            sessions: HashMap::new(),
            rooms: HashMap::new(),
            users: HashMap::new(),
            handoffs: HashSet::new(),
            rebuild_until: now + rebuild_window,
        }
    }

    /// Applies one sync from `node`. `default_lease` is used when the
    /// request names none.
    pub fn sync(
        &mut self,
        node: &str,
        req: SyncRequest,
        default_lease: Duration,
        now: Instant,
        events: &mut Vec<Event>,
    ) -> SyncOutcome {
        let lease = req.lease_ms.map(bounded_ms).unwrap_or(default_lease);
        if req.full {
            return self.full_sync(node, req, lease, now, events);
        }
        let mut outcome = SyncOutcome::default();
        let Some(state) = self.nodes.get_mut(node) else {
            outcome.need_full = true;
            return outcome;
        };
        if state.incarnation != req.incarnation {
            outcome.need_full = true;
            return outcome;
        }
        let mut ops = req.ops;
        if let Some(seq) = req.seq {
            let len = ops.len() as u64;
            match state.next_seq {
                // Ops are missing between what we applied and this batch.
                Some(next) if seq > next => {
                    outcome.need_full = true;
                    return outcome;
                }
                Some(next) => {
                    let skip = (next - seq).min(len) as usize;
                    ops.drain(..skip);
                    outcome.ignored += skip;
                    state.next_seq = Some(next.max(seq + len));
                }
                None => state.next_seq = Some(seq + len),
            }
        }
        state.lease_until = now + lease;
        for op in ops {
            if self.apply(node, op, now, true, events) {
                outcome.applied += 1;
            } else {
                outcome.ignored += 1;
            }
        }
        outcome
    }

    /// A full sync: `ops` describe every live session of the node.
    fn full_sync(
        &mut self,
        node: &str,
        req: SyncRequest,
        lease: Duration,
        now: Instant,
        events: &mut Vec<Event>,
    ) -> SyncOutcome {
        let mut outcome = SyncOutcome::default();
        match self.nodes.get_mut(node) {
            Some(state) => {
                if state.incarnation != req.incarnation {
                    outcome.replaced_incarnation = true;
                    state.incarnation = req.incarnation.clone();
                }
                state.lease_until = now + lease;
                state.next_seq = req.seq;
            }
            None => {
                outcome.silent = now < self.rebuild_until;
                self.nodes.insert(
                    node.to_string(),
                    NodeState {
                        incarnation: req.incarnation.clone(),
                        lease_until: now + lease,
                        sessions: HashSet::new(),
                        next_seq: req.seq,
                    },
                );
            }
        }
        let emit = !outcome.silent;

        // What the node says it has, in the order it said it.
        let mut order = Vec::new();
        let mut desired: HashMap<String, Desired> = HashMap::new();
        let mut handoffs = Vec::new();
        for op in req.ops {
            if !valid_op(&op) {
                outcome.ignored += 1;
                continue;
            }
            outcome.applied += 1;
            match op {
                Op::Connect {
                    session,
                    user,
                    info,
                } => {
                    let rooms = match desired.remove(&session) {
                        Some(d) if d.user == user => d.rooms,
                        Some(_) => BTreeSet::new(),
                        None => {
                            order.push(session.clone());
                            BTreeSet::new()
                        }
                    };
                    desired.insert(session, Desired { user, info, rooms });
                }
                Op::Join { session, room } => match desired.get_mut(&session) {
                    Some(d) => {
                        d.rooms.insert(room);
                    }
                    None => {
                        outcome.applied -= 1;
                        outcome.ignored += 1;
                    }
                },
                Op::Leave { session, room } => {
                    if let Some(d) = desired.get_mut(&session) {
                        d.rooms.remove(&room);
                    }
                }
                Op::Disconnect { session } => {
                    desired.remove(&session);
                }
                handoff @ Op::Handoff { .. } => handoffs.push(handoff),
            }
        }

        // A handoff in a full sync is about a session the snapshot no
        // longer lists (handed off while the sync was being built).
        handoffs.retain(|op| !desired.contains_key(op.session()));
        // Sessions the node no longer has leave, unless they wait in a
        // handoff grace (or are being handed off by this very sync).
        let handed: HashSet<&str> = handoffs.iter().map(Op::session).collect();
        let gone: Vec<String> = self
            .nodes
            .get(node)
            .map(|n| {
                n.sessions
                    .iter()
                    .filter(|s| !desired.contains_key(*s) && !handed.contains(s.as_str()))
                    .filter(|s| {
                        self.sessions
                            .get(*s)
                            .is_some_and(|s| s.handoff_until.is_none())
                    })
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let reason = if outcome.replaced_incarnation {
            EndReason::NodeLost
        } else {
            EndReason::Closed
        };
        for session in gone {
            self.remove_session(&session, reason, emit, events);
        }

        for session in order {
            let Some(d) = desired.remove(&session) else {
                continue;
            };
            self.claim(node, &session, d.user, d.info, emit, events);
            let current = self
                .sessions
                .get(&session)
                .map(|s| s.rooms.clone())
                .unwrap_or_default();
            for room in current.difference(&d.rooms) {
                self.leave_room(&session, room, emit, events);
            }
            for room in d.rooms.difference(&current) {
                self.join_room(&session, room, emit, events);
            }
        }
        for op in handoffs {
            self.apply(node, op, now, emit, events);
        }
        outcome
    }

    /// Applies one op from `node`; false when it was ignored.
    fn apply(
        &mut self,
        node: &str,
        op: Op,
        now: Instant,
        emit: bool,
        events: &mut Vec<Event>,
    ) -> bool {
        if !valid_op(&op) {
            return false;
        }
        if let Op::Connect {
            session,
            user,
            info,
        } = op
        {
            self.claim(node, &session, user, info, emit, events);
            return true;
        }
        // Every other op needs the sending node to own the session, and the
        // session not to be waiting in a handoff grace.
        let owned = self
            .sessions
            .get(op.session())
            .is_some_and(|s| s.node == node && s.handoff_until.is_none());
        if !owned {
            return false;
        }
        match op {
            Op::Connect { .. } => unreachable!("handled above"),
            Op::Join { session, room } => self.join_room(&session, &room, emit, events),
            Op::Leave { session, room } => self.leave_room(&session, &room, emit, events),
            Op::Disconnect { session } => {
                self.remove_session(&session, EndReason::Closed, emit, events)
            }
            Op::Handoff { session, grace_ms } => {
                if let Some(s) = self.sessions.get_mut(&session) {
                    s.handoff_until = Some(now + bounded_ms(grace_ms));
                    self.handoffs.insert(session);
                }
            }
        }
        true
    }

    /// `node` now holds `session` (new, resumed, or taken over after a
    /// handoff or a crash). Rooms of a known session are kept, silently.
    fn claim(
        &mut self,
        node: &str,
        session: &str,
        user: String,
        info: Option<Data>,
        emit: bool,
        events: &mut Vec<Event>,
    ) {
        if self.sessions.get(session).is_some_and(|s| s.user != user) {
            // A session id reused by another user is another session.
            self.remove_session(session, EndReason::Closed, emit, events);
        }
        match self.sessions.get_mut(session) {
            Some(s) => {
                if s.node != node {
                    if let Some(old) = self.nodes.get_mut(&s.node) {
                        old.sessions.remove(session);
                    }
                    s.node = node.to_string();
                }
                s.info = info;
                if s.handoff_until.take().is_some() {
                    self.handoffs.remove(session);
                }
            }
            None => {
                self.sessions.insert(
                    session.to_string(),
                    Session {
                        user: user.clone(),
                        info,
                        node: node.to_string(),
                        rooms: BTreeSet::new(),
                        handoff_until: None,
                    },
                );
                self.users
                    .entry(user)
                    .or_default()
                    .insert(session.to_string());
            }
        }
        if let Some(n) = self.nodes.get_mut(node) {
            n.sessions.insert(session.to_string());
        }
    }

    fn join_room(&mut self, session: &str, room: &str, emit: bool, events: &mut Vec<Event>) {
        let Some(s) = self.sessions.get_mut(session) else {
            return;
        };
        if !s.rooms.insert(room.to_string()) {
            return;
        }
        let members = self.rooms.entry(room.to_string()).or_default();
        let first = members.is_empty();
        members.insert(session.to_string());
        if emit {
            if first {
                events.push(Event::Occupied {
                    room: room.to_string(),
                });
            }
            events.push(Event::Join {
                room: room.to_string(),
                member: member(session, s),
            });
        }
    }

    fn leave_room(&mut self, session: &str, room: &str, emit: bool, events: &mut Vec<Event>) {
        let Some(s) = self.sessions.get_mut(session) else {
            return;
        };
        if !s.rooms.remove(room) {
            return;
        }
        let vacated = remove_from(&mut self.rooms, room, session);
        if emit {
            events.push(Event::Leave {
                room: room.to_string(),
                member: member(session, s),
            });
            if vacated {
                events.push(Event::Vacated {
                    room: room.to_string(),
                });
            }
        }
    }

    /// Forgets a session; it leaves every room it was in, then ends.
    fn remove_session(
        &mut self,
        session: &str,
        reason: EndReason,
        emit: bool,
        events: &mut Vec<Event>,
    ) {
        let Some(s) = self.sessions.remove(session) else {
            return;
        };
        for room in &s.rooms {
            let vacated = remove_from(&mut self.rooms, room, session);
            if emit {
                events.push(Event::Leave {
                    room: room.clone(),
                    member: member(session, &s),
                });
                if vacated {
                    events.push(Event::Vacated { room: room.clone() });
                }
            }
        }
        if emit {
            events.push(Event::SessionEnd {
                member: member(session, &s),
                reason,
            });
        }
        remove_from(&mut self.users, &s.user, session);
        if let Some(n) = self.nodes.get_mut(&s.node) {
            n.sessions.remove(session);
        }
        self.handoffs.remove(session);
    }

    /// Purges nodes whose lease expired and sessions whose handoff grace
    /// ended, with leave (and vacated, and session end) events. Run every
    /// few hundred milliseconds.
    pub fn sweep(&mut self, now: Instant, events: &mut Vec<Event>) -> Sweep {
        let mut sweep = Sweep::default();
        let expired: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.lease_until <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            let Some(node) = self.nodes.remove(&id) else {
                continue;
            };
            sweep.nodes_purged += 1;
            let mut sessions: Vec<String> = node.sessions.into_iter().collect();
            sessions.sort();
            for session in sessions {
                let in_grace = self
                    .sessions
                    .get(&session)
                    .is_some_and(|s| s.handoff_until.is_some());
                if !in_grace {
                    self.remove_session(&session, EndReason::NodeLost, true, events);
                    sweep.sessions_purged += 1;
                }
            }
        }
        let mut ended: Vec<String> = self
            .handoffs
            .iter()
            .filter(|s| {
                self.sessions
                    .get(*s)
                    .and_then(|s| s.handoff_until)
                    .is_none_or(|until| until <= now)
            })
            .cloned()
            .collect();
        ended.sort();
        for session in ended {
            self.remove_session(&session, EndReason::Expired, true, events);
            sweep.handoffs_expired += 1;
        }
        sweep
    }

    /// Members of a room, sessions in handoff grace included, by session id.
    pub fn members(&self, room: &str) -> Vec<Member> {
        self.rooms
            .get(room)
            .map(|sessions| {
                sessions
                    .iter()
                    .filter_map(|id| self.sessions.get(id).map(|s| member(id, s)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Owners of the given users' sessions and of the given sessions. A
    /// session in handoff grace has no connection anywhere and is left out.
    pub fn lookup(&self, users: &[String], sessions: &[String]) -> Vec<Owner> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        let by_user = users
            .iter()
            .filter_map(|u| self.users.get(u))
            .flat_map(|set| set.iter());
        for id in by_user.chain(sessions.iter()) {
            let Some(s) = self.sessions.get(id) else {
                continue;
            };
            if s.handoff_until.is_none() && seen.insert(id.as_str()) {
                out.push(Owner {
                    session: id.clone(),
                    user: s.user.clone(),
                    node: s.node.clone(),
                });
            }
        }
        out
    }

    pub fn counts(&self) -> Counts {
        Counts {
            nodes: self.nodes.len(),
            sessions: self.sessions.len(),
            rooms: self.rooms.len(),
            handoffs: self.handoffs.len(),
        }
    }
}

fn member(session: &str, s: &Session) -> Member {
    Member {
        user: s.user.clone(),
        session: session.to_string(),
        info: s.info.clone(),
    }
}

/// Removes `value` from `key`'s set; true when that emptied (and removed) it.
fn remove_from(index: &mut HashMap<String, BTreeSet<String>>, key: &str, value: &str) -> bool {
    let Some(set) = index.get_mut(key) else {
        return false;
    };
    if !set.remove(value) || !set.is_empty() {
        return false;
    }
    index.remove(key);
    true
}

/// A name fit for a map key and, for rooms, for a Redis channel: not empty,
/// not huge, and (rooms) without the braces of a cluster hash tag.
fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME_BYTES && !name.contains(['{', '}'])
}

fn valid_op(op: &Op) -> bool {
    valid_name(op.session())
        && match op {
            Op::Connect { user, .. } => valid_name(user),
            Op::Join { room, .. } | Op::Leave { room, .. } => valid_name(room),
            Op::Disconnect { .. } | Op::Handoff { .. } => true,
        }
}

#[cfg(test)]
mod tests;

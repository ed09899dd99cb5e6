//! The rooms this client means to be in.
//!
//! The server's idea of membership dies with a connection unless the session
//! is resumed, so the client keeps its own: which rooms it joined (and with
//! presence events or not), which joins and leaves are still waiting for their
//! reply. After a reconnect, exactly the settled rooms are resumed or joined
//! again; a join or leave that was in flight when the connection dropped
//! failed with `Disconnected` and is forgotten, so the caller decides.
//!
//! The node may also join the connection to rooms by itself (server-side
//! subscriptions, a `joined` without `id`); those are rooms like the others,
//! marked as the node's doing.

use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// `join` sent, `joined` not yet back.
    Joining,
    /// `joined` received: resumed or re-joined after a reconnect.
    Joined,
    /// `leave` sent: its messages are no longer delivered.
    Leaving,
}

#[derive(Debug, Clone, Copy)]
struct Room {
    state: State,
    presence: bool,
    /// The node joined the connection to it by itself.
    server: bool,
}

/// Membership as the client wants it.
#[derive(Debug, Default)]
pub(crate) struct Rooms {
    rooms: HashMap<String, Room>,
}

impl Rooms {
    /// A `join` was sent. A room already joined stays joined (the server
    /// answers a repeated join without changing anything).
    pub(crate) fn joining(&mut self, room: &str, presence: bool) {
        match self.rooms.get(room) {
            Some(r) if r.state == State::Joined => {}
            _ => {
                self.rooms.insert(
                    room.to_string(),
                    Room {
                        state: State::Joining,
                        presence,
                        server: false,
                    },
                );
            }
        }
    }

    /// `joined` arrived. The presence flag of the first successful join wins,
    /// matching the server, which ignores a repeated join.
    pub(crate) fn joined(&mut self, room: &str, presence: bool) {
        let entry = self.rooms.entry(room.to_string()).or_insert(Room {
            state: State::Joined,
            presence,
            server: false,
        });
        if entry.state != State::Joined {
            entry.presence = presence;
        }
        entry.state = State::Joined;
    }

    /// The node joined the connection to `room` by itself (a `joined`
    /// without `id`: a server-side subscription), without presence events.
    pub(crate) fn server_joined(&mut self, room: &str) {
        let entry = self.rooms.entry(room.to_string()).or_insert(Room {
            state: State::Joined,
            presence: false,
            server: true,
        });
        entry.state = State::Joined;
        entry.server = true;
    }

    /// Whether the node put the connection in `room` by itself.
    pub(crate) fn is_server(&self, room: &str) -> bool {
        self.rooms.get(room).is_some_and(|r| r.server)
    }

    /// A `join` failed: forget the room unless it was already joined.
    pub(crate) fn join_failed(&mut self, room: &str) {
        if self
            .rooms
            .get(room)
            .is_some_and(|r| r.state == State::Joining)
        {
            self.rooms.remove(room);
        }
    }

    /// A `leave` was sent.
    pub(crate) fn leaving(&mut self, room: &str) {
        if let Some(r) = self.rooms.get_mut(room) {
            r.state = State::Leaving;
        }
    }

    /// A `leave` failed for another reason than "not joined": still a member.
    pub(crate) fn leave_failed(&mut self, room: &str) {
        if let Some(r) = self.rooms.get_mut(room) {
            if r.state == State::Leaving {
                r.state = State::Joined;
            }
        }
    }

    pub(crate) fn remove(&mut self, room: &str) {
        self.rooms.remove(room);
    }

    /// The connection dropped: joins and leaves in flight failed, so only the
    /// settled rooms remain.
    pub(crate) fn forget_unsettled(&mut self) -> Vec<String> {
        let gone: Vec<String> = self
            .rooms
            .iter()
            .filter(|(_, r)| r.state != State::Joined)
            .map(|(name, _)| name.clone())
            .collect();
        for name in &gone {
            self.rooms.remove(name);
        }
        gone
    }

    /// Settled rooms with their presence flag, in a stable order.
    pub(crate) fn joined_rooms(&self) -> Vec<(String, bool)> {
        let mut rooms: Vec<(String, bool)> = self
            .rooms
            .iter()
            .filter(|(_, r)| r.state == State::Joined)
            .map(|(name, r)| (name.clone(), r.presence))
            .collect();
        rooms.sort();
        rooms
    }

    /// Whether room messages should reach the application. Only a room being
    /// left is muted; rooms the client never joined through this API (a raw
    /// `join` in a test) are delivered.
    pub(crate) fn delivers(&self, room: &str) -> bool {
        self.rooms
            .get(room)
            .is_none_or(|r| r.state != State::Leaving)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_settled_rooms_survive_a_dropped_connection() {
        let mut rooms = Rooms::default();
        rooms.joining("a", true);
        rooms.joined("a", true);
        rooms.joining("b", false);
        rooms.joining("c", false);
        rooms.joined("c", false);
        rooms.leaving("c");
        let mut gone = rooms.forget_unsettled();
        gone.sort();
        assert_eq!(gone, ["b", "c"]);
        assert_eq!(rooms.joined_rooms(), [("a".to_string(), true)]);
    }

    #[test]
    fn a_room_being_left_is_muted() {
        let mut rooms = Rooms::default();
        rooms.joined("a", false);
        assert!(rooms.delivers("a"));
        rooms.leaving("a");
        assert!(!rooms.delivers("a"));
        assert!(rooms.delivers("never-joined"));
    }

    #[test]
    fn a_room_the_node_joined_is_a_settled_room() {
        let mut rooms = Rooms::default();
        rooms.server_joined("s");
        rooms.joining("s", true);
        assert_eq!(rooms.joined_rooms(), [("s".to_string(), false)]);
        assert!(rooms.is_server("s"));
        assert!(rooms.forget_unsettled().is_empty());
        rooms.joined("a", false);
        assert!(!rooms.is_server("a"));
    }

    #[test]
    fn a_repeated_join_does_not_change_a_joined_room() {
        let mut rooms = Rooms::default();
        rooms.joined("a", true);
        rooms.joining("a", false);
        rooms.join_failed("a");
        rooms.joined("a", false);
        assert_eq!(rooms.joined_rooms(), [("a".to_string(), true)]);
    }
}

//! Where the client is in each room's stream, and the duplicate filter that
//! position gives for free.
//!
//! A room's messages carry strictly increasing offsets within an epoch. The
//! client keeps, per room, the last offset it *received and delivered* (with
//! its epoch). That one number does two jobs:
//!
//! - a message at or below it is a duplicate (a replay overlapping live
//!   traffic, a resume racing a re-join) and is never delivered twice;
//! - it is what the client asks to resume from after a reconnect.
//!
//! A different epoch means the room's history was lost and offsets restarted,
//! so the position is replaced rather than compared.

use std::collections::HashMap;

use roomcast_protocol::Since;

/// What to do with an incoming room message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// New: deliver it (the position moved to it).
    Deliver,
    /// First message of a new epoch (or of a room with no position yet):
    /// deliver it, the position restarted there.
    Restart,
    /// At or below the position: already delivered, drop it.
    Duplicate,
}

impl Admission {
    pub(crate) fn delivers(self) -> bool {
        !matches!(self, Admission::Duplicate)
    }
}

/// Last delivered position per room.
#[derive(Debug, Default)]
pub(crate) struct Positions {
    rooms: HashMap<String, Since>,
}

impl Positions {
    /// Decides whether a message is new, and if so moves the room's position
    /// to it.
    pub(crate) fn admit(&mut self, room: &str, epoch: &str, offset: u64) -> Admission {
        match self.rooms.get_mut(room) {
            Some(pos) if pos.epoch == epoch => {
                if offset <= pos.offset {
                    Admission::Duplicate
                } else {
                    pos.offset = offset;
                    Admission::Deliver
                }
            }
            Some(pos) => {
                *pos = since(epoch, offset);
                Admission::Restart
            }
            None => {
                self.rooms.insert(room.to_string(), since(epoch, offset));
                Admission::Restart
            }
        }
    }

    /// The room's position, for `resume` and for re-joining with `since`.
    pub(crate) fn get(&self, room: &str) -> Option<&Since> {
        self.rooms.get(room)
    }

    /// Moves the position forward to `to`: replaces it when the epoch differs
    /// or there is none, never moves it back within an epoch. Used when a
    /// join says "live delivery continues after this offset" and nothing
    /// before it is coming.
    pub(crate) fn advance_to(&mut self, room: &str, to: Since) {
        match self.rooms.get_mut(room) {
            Some(pos) if pos.epoch == to.epoch => pos.offset = pos.offset.max(to.offset),
            _ => {
                self.rooms.insert(room.to_string(), to);
            }
        }
    }

    /// Sets the position a replay will continue from. Unlike
    /// [`Positions::advance_to`] this may move *back* (the caller asked to
    /// replay from an earlier point), except that a position already past
    /// `from` in the same epoch is kept: those messages were delivered.
    pub(crate) fn replay_from(&mut self, room: &str, from: Since) {
        match self.rooms.get(room) {
            Some(pos) if pos.epoch == from.epoch && pos.offset >= from.offset => {}
            _ => {
                self.rooms.insert(room.to_string(), from);
            }
        }
    }

    pub(crate) fn remove(&mut self, room: &str) {
        self.rooms.remove(room);
    }
}

fn since(epoch: &str, offset: u64) -> Since {
    Since {
        offset,
        epoch: epoch.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivered(p: &mut Positions, room: &str, epoch: &str, offsets: &[u64]) -> Vec<u64> {
        offsets
            .iter()
            .copied()
            .filter(|&o| p.admit(room, epoch, o).delivers())
            .collect()
    }

    #[test]
    fn a_message_at_or_below_the_last_delivered_offset_is_dropped() {
        let mut p = Positions::default();
        let got = delivered(&mut p, "lobby", "e1", &[1, 2, 3, 2, 3, 4, 1, 5, 5]);
        assert_eq!(got, [1, 2, 3, 4, 5]);
        assert_eq!(p.get("lobby"), Some(&since("e1", 5)));
    }

    #[test]
    fn gaps_are_delivered_the_filter_only_stops_going_backwards() {
        let mut p = Positions::default();
        assert_eq!(delivered(&mut p, "r", "e", &[3, 7, 5, 8]), [3, 7, 8]);
    }

    #[test]
    fn a_new_epoch_restarts_the_position() {
        let mut p = Positions::default();
        delivered(&mut p, "r", "old", &[40, 41]);
        assert_eq!(p.admit("r", "new", 1), Admission::Restart);
        assert_eq!(delivered(&mut p, "r", "new", &[1, 2, 3]), [2, 3]);
        assert_eq!(p.get("r"), Some(&since("new", 3)));
    }

    #[test]
    fn rooms_are_independent() {
        let mut p = Positions::default();
        delivered(&mut p, "a", "e", &[1, 2, 3]);
        assert_eq!(delivered(&mut p, "b", "e", &[1, 2]), [1, 2]);
        assert_eq!(p.admit("a", "e", 3), Admission::Duplicate);
    }

    #[test]
    fn a_join_position_only_moves_forward_within_an_epoch() {
        let mut p = Positions::default();
        p.advance_to("r", since("e", 10));
        p.advance_to("r", since("e", 4));
        assert_eq!(p.get("r"), Some(&since("e", 10)));
        assert_eq!(p.admit("r", "e", 9), Admission::Duplicate);
        assert_eq!(p.admit("r", "e", 11), Admission::Deliver);
        p.advance_to("r", since("f", 2));
        assert_eq!(p.get("r"), Some(&since("f", 2)));
    }

    #[test]
    fn a_replay_start_keeps_what_was_already_delivered() {
        let mut p = Positions::default();
        p.replay_from("r", since("e", 5));
        assert_eq!(delivered(&mut p, "r", "e", &[5, 6, 7]), [6, 7]);
        // Asking to replay from an earlier offset must not re-deliver 6 and 7.
        p.replay_from("r", since("e", 3));
        assert_eq!(delivered(&mut p, "r", "e", &[4, 5, 6, 7, 8]), [8]);
        // A replay in another epoch starts over.
        p.replay_from("r", since("g", 3));
        assert_eq!(delivered(&mut p, "r", "g", &[3, 4]), [4]);
    }

    #[test]
    fn a_removed_room_starts_fresh() {
        let mut p = Positions::default();
        delivered(&mut p, "r", "e", &[1, 2]);
        p.remove("r");
        assert_eq!(p.get("r"), None);
        assert_eq!(delivered(&mut p, "r", "e", &[1]), [1]);
    }
}

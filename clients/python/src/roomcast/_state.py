"""Book-keeping shared by every connection of a client: room membership and
the last delivered position per room (the duplicate filter)."""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

from .models import Position

DELIVER = "deliver"
RESTART = "restart"
DUPLICATE = "duplicate"


class Positions:
    """The last delivered ``(offset, epoch)`` per room.

    A message at or below it in the same epoch was delivered already; a
    message of another epoch restarts the position (the room's history was
    lost and its offsets started again at 1).
    """

    def __init__(self) -> None:
        self._rooms: Dict[str, Position] = {}

    def admit(self, room: str, epoch: str, offset: int) -> str:
        """``deliver``, ``restart`` (first of an epoch) or ``duplicate``;
        moves the position to the message unless it is a duplicate."""
        pos = self._rooms.get(room)
        if pos is not None and pos.epoch == epoch:
            if offset <= pos.offset:
                return DUPLICATE
            self._rooms[room] = Position(offset, epoch)
            return DELIVER
        self._rooms[room] = Position(offset, epoch)
        return RESTART

    def get(self, room: str) -> Optional[Position]:
        return self._rooms.get(room)

    def advance_to(self, room: str, to: Position) -> None:
        """Live delivery continues after ``to``: replace the position when the
        epoch differs, never move it back within an epoch."""
        pos = self._rooms.get(room)
        if pos is not None and pos.epoch == to.epoch:
            if to.offset > pos.offset:
                self._rooms[room] = to
        else:
            self._rooms[room] = to

    def replay_from(self, room: str, start: Position) -> None:
        """A replay continues from ``start``: may move back, except past
        messages already delivered in the same epoch."""
        pos = self._rooms.get(room)
        if pos is not None and pos.epoch == start.epoch and pos.offset >= start.offset:
            return
        self._rooms[room] = start

    def remove(self, room: str) -> None:
        self._rooms.pop(room, None)


JOINING = "joining"
JOINED = "joined"
LEAVING = "leaving"


class Rooms:
    """Membership as the client wants it: joined rooms (with their presence
    flag) and the joins and leaves still waiting for a reply."""

    def __init__(self) -> None:
        self._rooms: Dict[str, List[object]] = {}  # room -> [state, presence]

    def joining(self, room: str, presence: bool) -> None:
        entry = self._rooms.get(room)
        if entry is not None and entry[0] == JOINED:
            return
        self._rooms[room] = [JOINING, presence]

    def joined(self, room: str, presence: bool) -> None:
        """The presence flag of the first successful join wins, as on the server."""
        entry = self._rooms.get(room)
        if entry is None:
            self._rooms[room] = [JOINED, presence]
        else:
            if entry[0] != JOINED:
                entry[1] = presence
            entry[0] = JOINED

    def join_failed(self, room: str) -> None:
        entry = self._rooms.get(room)
        if entry is not None and entry[0] == JOINING:
            del self._rooms[room]

    def leaving(self, room: str) -> None:
        entry = self._rooms.get(room)
        if entry is not None:
            entry[0] = LEAVING

    def leave_failed(self, room: str) -> None:
        entry = self._rooms.get(room)
        if entry is not None and entry[0] == LEAVING:
            entry[0] = JOINED

    def remove(self, room: str) -> None:
        self._rooms.pop(room, None)

    def forget_unsettled(self) -> List[str]:
        """The connection dropped: joins and leaves in flight failed."""
        gone = [room for room, entry in self._rooms.items() if entry[0] != JOINED]
        for room in gone:
            del self._rooms[room]
        return gone

    def joined_rooms(self) -> List[Tuple[str, bool]]:
        """Settled rooms as ``(room, presence)``, sorted by name."""
        return sorted((room, bool(entry[1])) for room, entry in self._rooms.items() if entry[0] == JOINED)

    def delivers(self, room: str) -> bool:
        """Only a room being left is muted."""
        entry = self._rooms.get(room)
        return entry is None or entry[0] != LEAVING

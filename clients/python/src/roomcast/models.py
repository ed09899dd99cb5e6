"""What the client hands to the application: messages, replies and events."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional


@dataclass(frozen=True)
class Position:
    """A place in a room's stream: the last offset seen in an epoch."""

    offset: int
    epoch: str


@dataclass(frozen=True)
class Member:
    user: str
    session: str
    info: Any = None

    @classmethod
    def from_frame(cls, raw: Any) -> "Member":
        raw = raw if isinstance(raw, dict) else {}
        return cls(user=str(raw.get("user", "")), session=str(raw.get("session", "")), info=raw.get("info"))


@dataclass(frozen=True)
class Message:
    """A room message. ``replayed`` is true for messages missed while away
    (or asked for with ``since``), delivered from history."""

    room: str
    offset: int
    epoch: str
    data: Any
    sender: Optional[Member] = None
    replayed: bool = False


@dataclass(frozen=True)
class Joined:
    room: str
    offset: int
    epoch: str
    recovered: Optional[bool] = None  # only when the join had ``since``


@dataclass(frozen=True)
class Ack:
    """A stored publish: ``duplicate`` is true when the key had been stored
    before (by an earlier attempt, or anyone using the same key)."""

    room: str
    offset: int
    key: str
    duplicate: bool = False
    attempts: int = 1


@dataclass(frozen=True)
class SessionInfo:
    session: str
    user: str
    node: str
    url: str
    ping_interval: float  # seconds
    resumed: bool
    subprotocol: Optional[str] = None  # the codec's subprotocol the server accepted
    token_expires_at: Optional[float] = None  # Unix seconds


@dataclass(frozen=True)
class Cause:
    """Why a connection (or an attempt) ended. ``kind`` is ``closed`` (with
    the close ``code``), ``lost`` (no close frame), ``heartbeat``,
    ``connect_failed``, ``unauthorized`` or ``dropped_for_test``."""

    kind: str
    code: Optional[int] = None
    reason: str = ""
    message: str = ""

    def __str__(self) -> str:
        if self.kind == "closed":
            return f"closed by the server with {self.code}" + (f" ({self.reason})" if self.reason else "")
        return f"{self.kind}: {self.message}" if self.message else self.kind


# ---- events (client.events()) ----------------------------------------------


@dataclass(frozen=True)
class Event:
    """Base class of everything :meth:`roomcast.Client.events` yields."""


@dataclass(frozen=True)
class StateChanged(Event):
    """``state`` is ``connecting``, ``connected``, ``reconnecting`` or ``disconnected``."""

    state: str
    url: Optional[str] = None
    attempt: int = 0
    delay: Optional[float] = None  # seconds before the next attempt (reconnecting)
    cause: Optional[Cause] = None  # why the last connection ended (reconnecting)
    resumed: Optional[bool] = None  # connected
    session: Optional[SessionInfo] = None  # connected
    restored: Dict[str, List[str]] = field(default_factory=dict)  # connected: resumed/rejoined rooms
    error: Optional[BaseException] = None  # disconnected: why the client stopped (None: close())


@dataclass(frozen=True)
class Direct(Event):
    """A direct message (``send`` to this user or session)."""

    data: Any
    sender: Optional[Member] = None


@dataclass(frozen=True)
class PresenceChanged(Event):
    """``kind`` is ``join`` or ``leave`` (rooms joined with ``presence=True``)."""

    kind: str
    room: str
    member: Member


@dataclass(frozen=True)
class ReconnectRequested(Event):
    """The node drains: it closes with 1012 next; the client reconnects after ``after`` seconds."""

    reason: str
    after: float


@dataclass(frozen=True)
class RecoveryFailed(Event):
    """After a reconnect the room is back, but what was missed could not be
    replayed (new epoch, or history trimmed): re-sync it from elsewhere."""

    room: str
    offset: int
    epoch: str


@dataclass(frozen=True)
class RejoinFailed(Event):
    """Joining again after a reconnect failed; the client left the room."""

    room: str
    error: BaseException


@dataclass(frozen=True)
class RoomLeft(Event):
    """The server took the client out of a room (``reason``: ``forbidden``
    when a refreshed token no longer allows it)."""

    room: str
    reason: str


@dataclass(frozen=True)
class TokenRefreshed(Event):
    expires_at: Optional[float]


@dataclass(frozen=True)
class TokenRefreshFailed(Event):
    error: BaseException


@dataclass(frozen=True)
class ServerErrorEvent(Event):
    """An ``error`` frame that answered no command."""

    code: str
    message: str


@dataclass(frozen=True)
class Unmatched(Event):
    """Any other frame."""

    frame: Dict[str, Any]

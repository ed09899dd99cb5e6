"""The roomcast client: one logical session across as many WebSocket
connections as it takes.

- Reconnect with exponential backoff and full jitter (:class:`Backoff`),
  rotating through the URLs; a node's ``reconnect`` notice (it drains, then
  closes with 1012) sets the delay instead; a refused token stops the client
  unless a token callback can bring a better one.
- Resume: the ``hello`` of a reconnect carries the session's resume token and,
  per room, the last offset and epoch delivered; when the server cannot
  resume, every room is joined again with ``since``. A room whose missed
  messages could not be replayed is reported (:class:`RecoveryFailed`).
- De-duplicate by offset per room: no message at or below the last delivered
  offset of its room and epoch reaches the application twice.
- Heartbeat: any bytes from the server count as a sign of life (the server
  pings a quiet connection every ``ping_interval_ms``); after one interval of
  silence the client sends a protocol ``ping``, and after the interval plus
  ``heartbeat_slack`` with nothing at all the connection is replaced.
- Publish with an idempotency key, generated per publish and reused by every
  retry of it (after ``unavailable``, a reply timeout, or a connection that
  dropped before the reply), within a bounded number of attempts and time.
- Token refresh: with a token callback and a token that expires, the client
  asks the callback for a new token before expiry and sends ``refresh``.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import re
import time
import uuid
from typing import (
    Any,
    AsyncIterator,
    Awaitable,
    Callable,
    Dict,
    List,
    Optional,
    Sequence,
    Set,
    TypeVar,
    Union,
)

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from ._state import DUPLICATE, Positions, Rooms
from .backoff import Backoff
from .codec import Codec, make_codec
from .errors import (
    ClientClosed,
    Disconnected,
    EncodeError,
    GaveUp,
    PublishFailed,
    RequestTimeout,
    RoomcastError,
    ServerError,
    Unauthorized,
    Unavailable,
    UnexpectedReply,
    server_error,
)
from .models import (
    Ack,
    Cause,
    Direct,
    Event,
    Joined,
    Member,
    Message,
    Position,
    PresenceChanged,
    ReconnectRequested,
    RecoveryFailed,
    RejoinFailed,
    RoomLeft,
    ServerErrorEvent,
    SessionInfo,
    StateChanged,
    TokenRefreshed,
    TokenRefreshFailed,
    Unmatched,
)

__all__ = ["Client", "Subscription", "connect", "TokenProvider"]

#: A token callback: a plain function or a coroutine function returning a JWT.
TokenProvider = Callable[[], Union[str, Awaitable[str]]]

#: A server that refuses a freshly provided token this many times in a row is
#: not going to accept the next one either.
MAX_REFUSALS = 2
#: A session shorter than this (seconds) does not reset the backoff, so a node
#: that accepts and drops connections at once is not hammered.
STABLE_SESSION = 10.0
#: Used when a server announces a ping interval of 0 (seconds).
FALLBACK_PING_INTERVAL = 25.0
CLOSE_UNAUTHORIZED = 4401
#: Token refreshes are at least this far apart (seconds), even when the
#: callback keeps returning a token that expires no later.
MIN_REFRESH_GAP = 1.0
KEY_PATTERN = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")
REPLY_TYPES = frozenset({"joined", "left", "presence", "pong", "ack", "error", "rpc_result", "refreshed"})

T = TypeVar("T")
_END = object()


class Subscription(AsyncIterator[T]):
    """An async iterator over what the client receives from now on.

    Made by :meth:`Client.messages`, :meth:`Client.events` and
    :meth:`Client.directs`. Items are queued from the moment it is made, so
    nothing is missed between making it and iterating. It ends when the
    client stops, or when it is closed (``close()`` or ``async with``).
    """

    def __init__(self, client: "Client", accept: Callable[[Any], bool]) -> None:
        self._client = client
        self._accept = accept
        self._queue: "asyncio.Queue[Any]" = asyncio.Queue()
        self._ended = False

    def _offer(self, item: Any) -> None:
        if not self._ended and self._accept(item):
            self._queue.put_nowait(item)

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            self._queue.put_nowait(_END)

    def close(self) -> None:
        """Stops the iteration (what is queued already is still yielded)."""
        self._client._subscriptions.discard(self)
        self._end()

    def __aiter__(self) -> "Subscription[T]":
        return self

    async def __anext__(self) -> T:
        item = await self._queue.get()
        if item is _END:
            self._queue.put_nowait(_END)  # stay ended for later calls
            raise StopAsyncIteration
        return item  # type: ignore[no-any-return]

    async def get(self, timeout: Optional[float] = None) -> T:
        """The next item; :class:`asyncio.TimeoutError` after ``timeout`` seconds,
        :class:`ClientClosed` when the subscription has ended."""
        try:
            if not self._queue.empty():
                return await self.__anext__()  # at once, whatever the timeout
            if timeout is not None and timeout <= 0:
                raise asyncio.TimeoutError()
            return await asyncio.wait_for(self.__anext__(), timeout)
        except StopAsyncIteration:
            raise ClientClosed("the subscription has ended") from None

    def pending(self) -> int:
        """How many items wait to be read."""
        return self._queue.qsize()

    async def __aenter__(self) -> "Subscription[T]":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()


class _TrackedConnection(ClientConnection):
    """A websockets connection that notes when bytes last arrived, so that
    the server's WebSocket pings count as signs of life."""

    last_data_at: float = 0.0

    def data_received(self, data: bytes) -> None:
        self.last_data_at = time.monotonic()
        super().data_received(data)


class _AttemptFailed(Exception):
    def __init__(self, cause: Cause) -> None:
        super().__init__(str(cause))
        self.cause = cause


class _Conn:
    """One WebSocket connection (or attempt) of the client."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.ws: Optional[_TrackedConnection] = None
        self.welcomed = False
        self.dead = False
        self.cause: Optional[Cause] = None
        self.retry_after: Optional[float] = None
        self.last_seen = time.monotonic()
        self.probed_at: Optional[float] = None
        self.started_at = 0.0
        self.ping_interval = FALLBACK_PING_INTERVAL
        self.done = asyncio.Event()
        self.outbox: "asyncio.Queue[Union[str, bytes]]" = asyncio.Queue()
        self.tasks: List["asyncio.Task[Any]"] = []

    def seen(self) -> float:
        ws_seen = self.ws.last_data_at if self.ws is not None else 0.0
        return max(self.last_seen, ws_seen)


class _Pending:
    def __init__(self, conn: _Conn, frame: Dict[str, Any], automatic: bool) -> None:
        self.conn = conn
        self.kind = frame["type"]
        self.room: Optional[str] = frame.get("room")
        self.presence = frame.get("presence") is True
        since = frame.get("since")
        self.since = Position(int(since["offset"]), str(since["epoch"])) if since else None
        self.automatic = automatic
        self.future: "asyncio.Future[Dict[str, Any]]" = asyncio.get_running_loop().create_future()

    def settle(self, frame: Optional[Dict[str, Any]], error: Optional[BaseException]) -> None:
        if self.future.done():
            return
        if error is not None:
            self.future.set_exception(error)
            # Automatic commands (rejoins, refreshes nobody waits for) must
            # not log "exception was never retrieved".
            self.future.exception()
        else:
            self.future.set_result(frame or {})


def _member(raw: Any) -> Optional[Member]:
    return Member.from_frame(raw) if isinstance(raw, dict) else None


class Client:
    """A connection to roomcast that survives reconnects.

    ::

        async with roomcast.Client("ws://127.0.0.1:8080/ws") as client:
            await client.join("lobby")
            ack = await client.publish("lobby", {"text": "hi"})
            async for msg in client.messages("lobby"):
                print(msg.offset, msg.data)

    Options (times in seconds):

    ``url``
        one ``ws://``/``wss://`` URL or a sequence of them; each connection
        attempt goes to the next one in turn.
    ``token``
        a JWT sent in every ``hello``.
    ``token_provider``
        a callable (plain or async) returning a JWT, asked before every
        connection attempt and before the current token expires (then sent
        as ``refresh``); takes precedence over ``token``.
    ``codec``
        ``"json"`` (default) or ``"msgpack"`` (needs the ``msgpack`` extra).
    ``backoff``
        a :class:`Backoff` (default: base 0.25, cap 15, unbounded attempts).
    ``connect_timeout``
        socket + ``hello`` + ``welcome`` must take no longer (10).
    ``request_timeout``
        a command fails with :class:`RequestTimeout` after this (10).
    ``heartbeat_slack``
        the connection is declared dead after ``ping_interval`` + this with
        no bytes from the server (5).
    ``publish_attempts``, ``publish_timeout``
        bounds of a publish's retries (6 attempts, 30 s in all).
    ``refresh_lead``
        refresh the token at 80 % of its remaining lifetime, but at least
        this long before expiry (5; half the lifetime for shorter tokens).
    ``compression``
        offer permessage-deflate (True).
    """

    def __init__(
        self,
        url: Union[str, Sequence[str]] = "ws://127.0.0.1:8080/ws",
        *,
        token: Optional[str] = None,
        token_provider: Optional[TokenProvider] = None,
        codec: Union[str, Codec] = "json",
        backoff: Optional[Backoff] = None,
        connect_timeout: float = 10.0,
        request_timeout: float = 10.0,
        heartbeat_slack: float = 5.0,
        publish_attempts: int = 6,
        publish_timeout: float = 30.0,
        refresh_lead: float = 5.0,
        compression: bool = True,
    ) -> None:
        urls = [url] if isinstance(url, str) else list(url)
        if not urls:
            raise ValueError("roomcast: at least one URL is needed")
        for u in urls:
            if not re.match(r"^wss?://", u, re.IGNORECASE):
                raise ValueError(f"roomcast: {u} is not a ws:// or wss:// URL")
        self._urls = urls
        self._token = token
        self._token_provider = token_provider
        self._codec = make_codec(codec)
        self._backoff = backoff or Backoff()
        self._connect_timeout = connect_timeout
        self._request_timeout = request_timeout
        self._heartbeat_slack = heartbeat_slack
        self._publish_attempts = max(1, publish_attempts)
        self._publish_timeout = publish_timeout
        self._refresh_lead = refresh_lead
        self._compression = compression

        self._state = "disconnected"
        self._halted = False
        self._stop_error: Optional[BaseException] = None
        self._supervisor: Optional["asyncio.Task[None]"] = None
        self._ready: Optional["asyncio.Future[SessionInfo]"] = None
        self._connected = asyncio.Event()  # set while a welcomed connection is live
        self._conn: Optional[_Conn] = None
        self._session: Optional[SessionInfo] = None
        self._ticket: Optional[Dict[str, str]] = None  # session, resume token of the last welcome
        self._token_expires_at: Optional[float] = None
        self._url_index = 0
        self._failures = 0
        self._quick_drops = 0
        self._refusals = 0
        self._ids = itertools.count(1)
        self._key_prefix = uuid.uuid4().hex[:12]
        self._key_counter = itertools.count(1)
        self._pending: Dict[int, _Pending] = {}
        self._rooms = Rooms()
        self._positions = Positions()
        self._replay_until: Dict[str, Position] = {}
        self._subscriptions: Set[Subscription[Any]] = set()
        self._wake = asyncio.Event()  # ends the wait before a reconnect (close())

    # ---- properties -----------------------------------------------------------

    @property
    def state(self) -> str:
        """``connecting``, ``connected``, ``reconnecting`` or ``disconnected``."""
        return self._state

    @property
    def session(self) -> Optional[SessionInfo]:
        """The current session while connected, else ``None``."""
        return self._session if self._state == "connected" else None

    @property
    def rooms(self) -> List[str]:
        """The rooms this client is in (kept across reconnects)."""
        return [room for room, _ in self._rooms.joined_rooms()]

    @property
    def token_expires_at(self) -> Optional[float]:
        """When the connection's token expires (Unix seconds), if it does."""
        return self._token_expires_at

    def position(self, room: str) -> Optional[Position]:
        """The last delivered offset and epoch of ``room``."""
        return self._positions.get(room)

    # ---- iterators ------------------------------------------------------------

    def messages(self, room: Optional[str] = None) -> Subscription[Message]:
        """Room messages from now on (of ``room`` only, if given)."""
        if room is None:
            return self._subscribe(lambda item: isinstance(item, Message))
        return self._subscribe(lambda item: isinstance(item, Message) and item.room == room)

    def events(self) -> Subscription[Event]:
        """Everything else: state changes, direct messages, presence events,
        drain notices, recovery failures, token refreshes, …"""
        return self._subscribe(lambda item: isinstance(item, Event))

    def directs(self) -> Subscription[Direct]:
        """Direct messages from now on."""
        return self._subscribe(lambda item: isinstance(item, Direct))

    def _subscribe(self, accept: Callable[[Any], bool]) -> Subscription[Any]:
        sub: Subscription[Any] = Subscription(self, accept)
        if self._halted:
            sub._end()
        else:
            self._subscriptions.add(sub)
        return sub

    def _emit(self, item: Any) -> None:
        for sub in list(self._subscriptions):
            sub._offer(item)

    def _set_state(self, state: str, **details: Any) -> None:
        self._state = state
        self._emit(StateChanged(state=state, **details))

    # ---- life cycle -----------------------------------------------------------

    async def __aenter__(self) -> "Client":
        await self.connect()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def connect(self) -> SessionInfo:
        """Starts the client; returns once the first ``welcome`` arrived
        (retrying with backoff until then). Raises if the client stops first
        (closed, token refused, attempts exhausted). Calling it again waits
        for the same first connection."""
        if self._halted:
            raise ClientClosed("the client is closed")
        loop = asyncio.get_running_loop()
        if self._ready is None:
            self._ready = loop.create_future()
            self._supervisor = loop.create_task(self._supervise(), name="roomcast-client")
        return await asyncio.shield(self._ready)

    async def wait_connected(self, timeout: Optional[float] = None) -> SessionInfo:
        """Returns the session once connected (at once if it is); raises
        :class:`asyncio.TimeoutError` after ``timeout`` seconds, or why the
        client stopped."""
        await asyncio.wait_for(self._wait_live(), timeout)
        assert self._session is not None
        return self._session

    def _is_live(self) -> bool:
        conn = self._conn
        return conn is not None and conn.welcomed and not conn.dead

    async def _wait_live(self) -> None:
        while True:
            if self._halted:
                raise self._stop_error or ClientClosed("the client is closed")
            if self._is_live():
                return
            # Cleared whenever the connection is not live, set by a welcome
            # (and when the client stops): no busy loop.
            await self._connected.wait()

    async def close(self) -> None:
        """Closes the connection cleanly (close code 1000) and stops the
        client for good; commands fail with :class:`ClientClosed` from then on."""
        conn = self._conn
        self._finish(None)
        if conn is not None and conn.ws is not None and not conn.dead:
            conn.dead = True
            conn.cause = Cause("closed", code=1000, reason="client closed")
            try:
                await asyncio.wait_for(conn.ws.close(1000, "client closed"), 2.0)
            except Exception:
                pass
            conn.done.set()
        task = self._supervisor
        if task is not None and task is not asyncio.current_task() and not task.done():
            task.cancel()
            try:
                await asyncio.wait_for(task, 3.0)
            except BaseException:
                pass

    def drop_connection_for_test(self, reconnect_after: float = 0.0) -> bool:
        """For tests: cuts the socket at once, as a network failure would,
        and reconnects after ``reconnect_after`` seconds, resuming."""
        conn = self._conn
        if conn is None or not conn.welcomed or conn.dead:
            return False
        conn.retry_after = reconnect_after
        self._fail(conn, Cause("dropped_for_test"))
        return True

    def _finish(self, error: Optional[BaseException]) -> None:
        if self._halted:
            return
        self._halted = True
        self._stop_error = error
        for pending in list(self._pending.values()):
            pending.settle(None, ClientClosed("the client is closed"))
        self._pending.clear()
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(error or ClientClosed("the client is closed"))
            self._ready.exception()
        self._set_state("disconnected", error=error)
        self._connected.set()  # wake the waiters: they see the client halted
        self._wake.set()
        for sub in list(self._subscriptions):
            sub._end()
        self._subscriptions.clear()

    async def _supervise(self) -> None:
        try:
            while not self._halted:
                url = self._urls[self._url_index % len(self._urls)]
                self._url_index += 1
                conn = _Conn(url)
                self._conn = conn
                self._set_state("connecting", url=url, attempt=self._failures + 1)
                try:
                    cause = await self._run_connection(conn)
                finally:
                    await self._discard(conn)
                if self._conn is conn:
                    self._conn = None
                if self._halted:
                    return
                if conn.welcomed:
                    self._connection_lost(conn)
                    lasted = time.monotonic() - conn.started_at
                    self._quick_drops = 0 if lasted >= STABLE_SESSION else self._quick_drops + 1
                    counts = False
                else:
                    self._failures += 1
                    counts = True
                try:
                    delay = self._retry_delay(cause, conn.retry_after, counts)
                except RoomcastError as err:
                    self._finish(err)
                    return
                self._set_state("reconnecting", url=url, attempt=self._failures + 1, delay=delay, cause=cause)
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), delay)
                except asyncio.TimeoutError:
                    pass
        except asyncio.CancelledError:
            raise
        except BaseException as err:  # a bug: stop rather than spin
            self._finish(RoomcastError(f"client failed: {err!r}", code="internal"))

    def _retry_delay(self, cause: Cause, retry_after: Optional[float], counts: bool) -> float:
        if cause.kind == "unauthorized" or (cause.kind == "closed" and cause.code == CLOSE_UNAUTHORIZED):
            self._refusals += 1
            # A fixed token that was refused will be refused again; only a
            # callback can bring a better one, and only so many times.
            if self._token_provider is None or self._refusals >= MAX_REFUSALS:
                raise Unauthorized(str(cause), close_code=cause.code, cause=cause)
        if counts and self._backoff.exhausted(self._failures):
            raise GaveUp(f"gave up after {self._failures} attempts: {cause}", attempts=self._failures, cause=cause)
        if retry_after is not None:
            return retry_after
        return self._backoff.delay(self._failures + self._quick_drops)

    # ---- one connection -------------------------------------------------------

    async def _run_connection(self, conn: _Conn) -> Cause:
        try:
            await asyncio.wait_for(self._open(conn), self._connect_timeout)
        except asyncio.TimeoutError:
            self._fail(conn, Cause("connect_failed", message=f"no welcome within {self._connect_timeout} s"))
        except _AttemptFailed as failed:
            self._fail(conn, failed.cause)
        except ConnectionClosed as closed:
            self._fail(conn, _closed_cause(closed))
        except (OSError, InvalidHandshake, InvalidURI, EOFError) as err:
            self._fail(conn, Cause("connect_failed", message=f"{conn.url}: {err}"))
        except Exception as err:
            self._fail(conn, Cause("connect_failed", message=f"{conn.url}: {err!r}"))
        if not conn.dead:
            conn.tasks.append(asyncio.create_task(self._read_loop(conn)))
            conn.tasks.append(asyncio.create_task(self._watchdog(conn)))
            if self._token_provider is not None:
                conn.tasks.append(asyncio.create_task(self._refresh_loop(conn)))
            await conn.done.wait()
        assert conn.cause is not None
        return conn.cause

    async def _open(self, conn: _Conn) -> None:
        token = await self._obtain_token(conn)
        ws = await ws_connect(
            conn.url,
            subprotocols=[self._codec.subprotocol],  # type: ignore[list-item]
            compression="deflate" if self._compression else None,
            open_timeout=None,
            ping_interval=None,  # the server pings; the watchdog watches
            close_timeout=2,
            max_size=2**24,
            user_agent_header="roomcast-python",
            create_connection=_TrackedConnection,
        )
        conn.ws = ws  # type: ignore[assignment]
        if conn.dead:
            return
        if ws.subprotocol is not None and ws.subprotocol != self._codec.subprotocol:
            raise _AttemptFailed(Cause("connect_failed", message=f"the server chose {ws.subprotocol}"))
        conn.tasks.append(asyncio.create_task(self._write_loop(conn)))
        hello: Dict[str, Any] = {"type": "hello", "id": next(self._ids)}
        if token:
            hello["token"] = token
        if self._ticket is not None:
            hello["resume"] = {
                "session": self._ticket["session"],
                "token": self._ticket["resume_token"],
                "rooms": self._resume_rooms(),
            }
        self._write(conn, hello)
        while not conn.dead:
            frame = self._decode(conn, await ws.recv())
            if frame is None:
                continue
            kind = frame["type"]
            if kind == "welcome":
                self._on_welcome(conn, frame)
                return
            if kind == "error":
                code, message = frame.get("code"), frame.get("message") or ""
                if code == "unauthorized":
                    raise _AttemptFailed(Cause("unauthorized", message=str(message)))
                raise _AttemptFailed(Cause("connect_failed", message=f"hello refused: {code}: {message}"))
            if kind == "reconnect":
                conn.retry_after = _seconds(frame.get("after_ms"))
            # nothing else is expected before welcome

    async def _obtain_token(self, conn: Optional[_Conn] = None) -> Optional[str]:
        if self._token_provider is None:
            return self._token
        try:
            token = self._token_provider()
            if inspect.isawaitable(token):
                token = await token
        except Exception as err:
            if conn is None:
                raise
            raise _AttemptFailed(Cause("connect_failed", message=f"token provider failed: {err!r}")) from err
        return str(token)

    def _resume_rooms(self) -> List[Dict[str, Any]]:
        rooms = []
        for room, presence in self._rooms.joined_rooms():
            pos = self._positions.get(room)
            if pos is None:
                continue
            entry: Dict[str, Any] = {"room": room, "offset": pos.offset, "epoch": pos.epoch}
            if presence:
                entry["presence"] = True
            rooms.append(entry)
        return rooms

    def _fail(self, conn: _Conn, cause: Cause) -> None:
        """Marks ``conn`` dead; the supervisor cleans up and plans the next attempt."""
        if conn.dead:
            return
        conn.dead = True
        conn.cause = cause
        conn.done.set()
        if conn.welcomed and self._conn is conn:
            self._connected.clear()
        if cause.kind in ("heartbeat", "dropped_for_test") and conn.ws is not None:
            # As a network failure would: no closing handshake to wait for.
            transport = conn.ws.transport
            if transport is not None:
                transport.abort()

    async def _discard(self, conn: _Conn) -> None:
        if not conn.dead:
            self._fail(conn, Cause("lost", message="the client stopped the connection"))
        for task in conn.tasks:
            task.cancel()
        for task in conn.tasks:
            try:
                await task
            except BaseException:
                pass
        conn.tasks.clear()
        ws = conn.ws
        if ws is not None:
            try:
                await asyncio.wait_for(ws.close(1000, "reconnecting"), 1.0)
            except BaseException:
                if ws.transport is not None:
                    ws.transport.abort()

    def _connection_lost(self, conn: _Conn) -> None:
        """What was in flight fails; unsettled rooms are forgotten."""
        for ident, pending in list(self._pending.items()):
            if pending.conn is conn:
                del self._pending[ident]
                pending.settle(None, Disconnected("the connection dropped before the reply"))
        for room in self._rooms.forget_unsettled():
            self._positions.remove(room)
            self._replay_until.pop(room, None)

    async def _write_loop(self, conn: _Conn) -> None:
        assert conn.ws is not None
        try:
            while True:
                message = await conn.outbox.get()
                await conn.ws.send(message)
        except asyncio.CancelledError:
            raise
        except ConnectionClosed as closed:
            self._fail(conn, _closed_cause(closed))
        except Exception as err:
            self._fail(conn, Cause("lost", message=f"send failed: {err!r}"))

    async def _read_loop(self, conn: _Conn) -> None:
        assert conn.ws is not None
        try:
            async for raw in conn.ws:
                if conn.dead:
                    return
                frame = self._decode(conn, raw)
                if frame is None:
                    continue
                try:
                    self._on_frame(conn, frame)
                except (TypeError, ValueError, KeyError):
                    self._emit(Unmatched(frame=frame))  # a malformed frame: ignored
            self._fail(conn, _closed_cause(None, conn.ws))
        except asyncio.CancelledError:
            raise
        except ConnectionClosed as closed:
            self._fail(conn, _closed_cause(closed))
        except Exception as err:
            self._fail(conn, Cause("lost", message=repr(err)))

    async def _watchdog(self, conn: _Conn) -> None:
        interval = conn.ping_interval
        dead_after = interval + self._heartbeat_slack
        every = min(1.0, max(0.02, interval / 4))
        while not conn.dead:
            await asyncio.sleep(every)
            silent = time.monotonic() - conn.seen()
            if silent >= dead_after:
                self._fail(conn, Cause("heartbeat", message=f"nothing from the server for {silent:.1f} s"))
                return
            if silent >= interval:
                if conn.probed_at is None or conn.probed_at < conn.seen():
                    # Quiet for a full interval: make the server say something.
                    conn.probed_at = time.monotonic()
                    self._write(conn, {"type": "ping"})

    def _decode(self, conn: _Conn, raw: Union[str, bytes]) -> Optional[Dict[str, Any]]:
        conn.last_seen = time.monotonic()
        try:
            frame = self._codec.decode(raw)
        except Exception:
            return None
        if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
            return None
        return frame

    def _write(self, conn: _Conn, frame: Dict[str, Any]) -> None:
        try:
            message = self._codec.encode(frame)
        except Exception as err:
            raise EncodeError(f"cannot encode the frame: {err}") from err
        conn.outbox.put_nowait(message)

    # ---- incoming -------------------------------------------------------------

    def _on_welcome(self, conn: _Conn, welcome: Dict[str, Any]) -> None:
        conn.welcomed = True
        conn.started_at = time.monotonic()
        self._failures = 0
        self._refusals = 0
        self._ticket = {"session": str(welcome.get("session")), "resume_token": str(welcome.get("resume_token"))}
        interval = _seconds(welcome.get("ping_interval_ms")) or 0.0
        conn.ping_interval = interval if interval > 0 else FALLBACK_PING_INTERVAL
        expires = welcome.get("token_expires_at")
        self._token_expires_at = float(expires) if isinstance(expires, (int, float)) else None
        resumed = welcome.get("resumed") is True
        self._session = SessionInfo(
            session=str(welcome.get("session")),
            user=str(welcome.get("user")),
            node=str(welcome.get("node")),
            url=conn.url,
            ping_interval=conn.ping_interval,
            resumed=resumed,
            token_expires_at=self._token_expires_at,
            subprotocol=conn.ws.subprotocol if conn.ws is not None else None,
        )
        restored = self._restore_rooms(conn, resumed, welcome.get("rooms") or [])
        self._set_state("connected", url=conn.url, resumed=resumed, session=self._session, restored=restored)
        self._connected.set()
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(self._session)

    def _restore_rooms(self, conn: _Conn, resumed: bool, statuses: List[Any]) -> Dict[str, List[str]]:
        """Settles the rooms the server resumed and joins the others again
        with ``since``, so the server replays what it still can."""
        restored: List[str] = []
        if resumed:
            for status in statuses:
                if not isinstance(status, dict):
                    continue
                room = str(status.get("room"))
                if room not in self.rooms:
                    self._rooms.joined(room, False)
                self._settle_position(
                    room,
                    self._positions.get(room),
                    str(status.get("epoch")),
                    int(status.get("offset") or 0),
                    status.get("recovered"),
                    True,
                )
                restored.append(room)
        rejoined: List[str] = []
        for room, presence in self._rooms.joined_rooms():
            if room in restored:
                continue
            frame: Dict[str, Any] = {"type": "join", "room": room}
            since = self._positions.get(room)
            if since is not None:
                frame["since"] = {"offset": since.offset, "epoch": since.epoch}
            if presence:
                frame["presence"] = True
            self._command(conn, frame, automatic=True)
            rejoined.append(room)
        return {"resumed": restored, "rejoined": rejoined}

    def _on_frame(self, conn: _Conn, frame: Dict[str, Any]) -> None:
        kind = frame["type"]
        ident = frame.get("id")
        if kind == "message":
            self._on_message(frame)
            return
        if kind == "direct":
            self._emit(Direct(data=frame.get("data"), sender=_member(frame.get("from"))))
            return
        if kind in ("presence_join", "presence_leave") and ident is None:
            self._emit(
                PresenceChanged(
                    kind=kind[len("presence_") :],
                    room=str(frame.get("room")),
                    member=Member.from_frame(frame.get("member")),
                )
            )
            return
        if kind == "reconnect":
            after = _seconds(frame.get("after_ms"))
            conn.retry_after = after
            self._emit(ReconnectRequested(reason=str(frame.get("reason", "")), after=after or 0.0))
            return
        if kind == "pong" and ident is None:
            return  # the watchdog's probe
        if kind == "error" and ident is None:
            self._emit(ServerErrorEvent(code=str(frame.get("code")), message=str(frame.get("message", ""))))
            return
        if kind == "left" and ident is None:
            room = str(frame.get("room"))
            self._forget(room)
            self._emit(RoomLeft(room=room, reason=str(frame.get("reason", ""))))
            return
        if kind == "joined" and ident is None:
            # A server-side subscription (token claim `subs`), joined by the
            # node without `since`: after a fresh session, what this client
            # missed in the room is not replayed (its own join with `since`
            # then finds the room joined already), so say so.
            room = str(frame.get("room"))
            epoch, offset = str(frame.get("epoch")), int(frame.get("offset") or 0)
            pos = self._positions.get(room)
            gap = pos is not None and (pos.epoch != epoch or pos.offset < offset)
            self._rooms.joined(room, False)
            self._settle_position(room, None, epoch, offset, None, False)
            if gap:
                self._emit(RecoveryFailed(room=room, offset=offset, epoch=epoch))
            return
        if ident is not None and kind in REPLY_TYPES:
            self._on_reply(ident, frame)
            return
        self._emit(Unmatched(frame=frame))

    def _on_message(self, frame: Dict[str, Any]) -> None:
        room = str(frame.get("room"))
        offset = frame.get("offset")
        epoch = str(frame.get("epoch"))
        if not isinstance(offset, int) or not self._rooms.delivers(room):
            return
        if self._positions.admit(room, epoch, offset) == DUPLICATE:
            return
        until = self._replay_until.get(room)
        replayed = until is not None and until.epoch == epoch and offset <= until.offset
        if until is not None and not replayed:
            del self._replay_until[room]
        self._emit(
            Message(
                room=room,
                offset=offset,
                epoch=epoch,
                data=frame.get("data"),
                sender=_member(frame.get("from")),
                replayed=replayed,
            )
        )

    def _on_reply(self, ident: Any, frame: Dict[str, Any]) -> None:
        pending = self._pending.pop(ident, None) if isinstance(ident, int) else None
        if pending is None:
            self._emit(Unmatched(frame=frame))
            return
        kind = frame["type"]
        room = pending.room
        if pending.kind == "join" and room is not None:
            if kind == "joined":
                self._rooms.joined(room, pending.presence)
                self._settle_position(
                    room,
                    pending.since,
                    str(frame.get("epoch")),
                    int(frame.get("offset") or 0),
                    frame.get("recovered"),
                    pending.automatic,
                )
            elif kind == "error":
                if pending.automatic:
                    self._forget(room)
                    self._emit(RejoinFailed(room=room, error=server_error(frame.get("code"), frame.get("message"))))
                else:
                    self._rooms.join_failed(room)
        elif pending.kind == "leave" and room is not None:
            if kind == "left" or (kind == "error" and frame.get("code") == "not_joined"):
                self._forget(room)
            elif kind == "error":
                self._rooms.leave_failed(room)
        if kind == "error":
            pending.settle(None, server_error(frame.get("code"), frame.get("message"), id=ident))
        else:
            pending.settle(frame, None)

    def _forget(self, room: str) -> None:
        self._rooms.remove(room)
        self._positions.remove(room)
        self._replay_until.pop(room, None)

    def _settle_position(
        self,
        room: str,
        since: Optional[Position],
        epoch: str,
        offset: int,
        recovered: Any,
        automatic: bool,
    ) -> None:
        """Where the room's stream continues after a join or a resumed room.

        After a successful replay the position stays at ``since`` (the
        replayed messages move it on); otherwise nothing before the room's
        current offset is coming, so the position jumps there, and when the
        client itself asked for the replay the application hears that it
        must re-sync."""
        if since is not None and recovered is True:
            self._positions.replay_from(room, since)
            if offset > since.offset:
                self._replay_until[room] = Position(offset, epoch)
        else:
            self._positions.advance_to(room, Position(offset, epoch))
            self._replay_until.pop(room, None)
        if automatic and recovered is False:
            self._emit(RecoveryFailed(room=room, offset=offset, epoch=epoch))

    # ---- token refresh --------------------------------------------------------

    def _refresh_delay(self, remaining: float) -> float:
        lead = max(remaining * 0.2, min(self._refresh_lead, remaining / 2))
        return max(0.0, remaining - lead)

    async def _refresh_loop(self, conn: _Conn) -> None:
        retry_in: Optional[float] = None
        last_try: Optional[float] = None
        while not conn.dead:
            expires = self._token_expires_at
            if expires is None:
                return
            remaining = expires - time.time()
            if remaining <= 0 and last_try is not None:
                # Expired, and the callback had nothing better: the server
                # closes with 4401, and the reconnect asks the callback again.
                return
            delay = retry_in if retry_in is not None else self._refresh_delay(remaining)
            if last_try is not None:
                delay = max(delay, last_try + MIN_REFRESH_GAP - time.monotonic())
            await asyncio.sleep(delay)
            if conn.dead:
                return
            if self._token_expires_at != expires:
                continue  # refreshed meanwhile (refresh())
            last_try = time.monotonic()
            try:
                await self._refresh_on(conn, None)
                retry_in = None
            except (Disconnected, ClientClosed):
                return
            except Exception as err:
                self._emit(TokenRefreshFailed(error=err))
                # Try again while the token lasts.
                left = (self._token_expires_at or 0) - time.time()
                retry_in = min(MIN_REFRESH_GAP, max(0.1, left / 4))

    async def _refresh_on(self, conn: _Conn, token: Optional[str]) -> Optional[float]:
        if token is None:
            token = await self._obtain_token()
        if token is None:
            raise ValueError("no token to refresh with (no token_provider)")
        fut = self._command(conn, {"type": "refresh", "token": token})
        try:
            reply = await asyncio.wait_for(fut, self._request_timeout)
        except asyncio.TimeoutError:
            raise RequestTimeout(f"no reply within {self._request_timeout} s") from None
        if reply.get("type") != "refreshed":
            raise UnexpectedReply(f"unexpected reply {reply.get('type')}")
        expires = reply.get("expires_at")
        self._token_expires_at = float(expires) if isinstance(expires, (int, float)) else None
        if self._token_provider is None:
            self._token = token  # the next hello uses the newer token
        self._emit(TokenRefreshed(expires_at=self._token_expires_at))
        return self._token_expires_at

    async def refresh(self, token: Optional[str] = None) -> Optional[float]:
        """Sends ``refresh`` now with ``token`` (default: a token from the
        callback); returns the new expiry (Unix seconds). Raises
        :class:`Unauthorized` or :class:`Forbidden` when the server refuses
        it (the old expiry then stands)."""
        conn = self._live_conn()
        return await self._refresh_on(conn, token)

    # ---- commands -------------------------------------------------------------

    def _live_conn(self) -> _Conn:
        if self._halted:
            raise self._stop_error or ClientClosed("the client is closed")
        conn = self._conn
        if conn is None or not conn.welcomed or conn.dead:
            raise Disconnected(f"not connected ({self._state})")
        return conn

    def _command(self, conn: _Conn, frame: Dict[str, Any], automatic: bool = False) -> "asyncio.Future[Dict[str, Any]]":
        ident = next(self._ids)
        frame["id"] = ident
        pending = _Pending(conn, frame, automatic)
        self._write(conn, frame)  # raises EncodeError before anything is recorded
        if pending.kind == "join" and pending.room is not None:
            self._rooms.joining(pending.room, pending.presence)
        elif pending.kind == "leave" and pending.room is not None:
            self._rooms.leaving(pending.room)
        self._pending[ident] = pending
        return pending.future

    async def _request(self, frame: Dict[str, Any]) -> Dict[str, Any]:
        fut = self._command(self._live_conn(), frame)
        try:
            return await asyncio.wait_for(fut, self._request_timeout)
        except asyncio.TimeoutError:
            # The reply may still come and update the rooms; the caller stops waiting.
            raise RequestTimeout(f"no reply within {self._request_timeout} s") from None

    async def join(self, room: str, *, since: Optional[Position] = None, presence: bool = False) -> Joined:
        """Joins ``room``. ``since`` replays the messages after that position
        when history still has them (``recovered`` says whether it did);
        ``presence=True`` subscribes to presence events. The room is kept
        across reconnects: resumed, or joined again from the last offset."""
        frame: Dict[str, Any] = {"type": "join", "room": room}
        if since is not None:
            frame["since"] = {"offset": since.offset, "epoch": since.epoch}
        if presence:
            frame["presence"] = True
        reply = await self._request(frame)
        recovered = reply.get("recovered")
        return Joined(
            room=str(reply.get("room", room)),
            offset=int(reply.get("offset") or 0),
            epoch=str(reply.get("epoch")),
            recovered=recovered if isinstance(recovered, bool) else None,
        )

    async def leave(self, room: str) -> None:
        """Leaves ``room``; its messages stop at once, even before the reply."""
        await self._request({"type": "leave", "room": room})

    def new_key(self) -> str:
        """A fresh idempotency key (unique per client and publish)."""
        return f"py-{self._key_prefix}-{next(self._key_counter)}"

    async def publish(self, room: str, data: Any, *, key: Optional[str] = None, retry: bool = True) -> Ack:
        """Publishes ``data`` to ``room``; returns the :class:`Ack` once stored.

        Every publish carries an idempotency ``key`` (generated unless
        given). With ``retry`` (the default) the same publish, with the same
        key, is sent again after ``unavailable``, after a reply timeout and
        after a reconnect while it was unanswered (waiting for the
        connection), up to ``publish_attempts`` attempts within
        ``publish_timeout`` seconds; the server stores it once, and answers
        a repeat with ``duplicate=True``. Other errors are raised at once.
        When the attempts run out, :class:`PublishFailed` tells the last
        failure and the key."""
        if key is None:
            key = self.new_key()
        elif not KEY_PATTERN.match(key):
            raise ValueError("an idempotency key is 1 to 64 characters of A-Z a-z 0-9 _ . : -")
        deadline = time.monotonic() + self._publish_timeout
        attempts = 0
        last: Optional[RoomcastError] = None
        while True:
            if self._halted:
                raise self._stop_error or ClientClosed("the client is closed")
            remaining = deadline - time.monotonic()
            if attempts >= self._publish_attempts or remaining <= 0:
                assert last is not None
                raise PublishFailed(
                    f"not acknowledged after {attempts} attempts: {last.message}",
                    code=last.code,
                    key=key,
                    attempts=attempts,
                    last_error=last,
                )
            try:
                if not self._is_live():
                    if not retry:
                        raise Disconnected(f"not connected ({self._state})")
                    try:
                        await asyncio.wait_for(self._wait_live(), remaining)
                    except asyncio.TimeoutError:
                        last = Disconnected("no connection within the publish timeout")
                        continue
                conn = self._live_conn()
                attempts += 1
                fut = self._command(conn, {"type": "publish", "room": room, "data": data, "key": key})
                try:
                    reply = await asyncio.wait_for(fut, min(self._request_timeout, max(remaining, 0.001)))
                except asyncio.TimeoutError:
                    raise RequestTimeout("no reply in time") from None
            except (Unavailable, Disconnected, RequestTimeout) as err:
                if not retry:
                    raise
                last = err
                if isinstance(err, Unavailable):
                    pause = Backoff(base=0.1, cap=1.0).delay(attempts)
                    await asyncio.sleep(min(pause, max(0.0, deadline - time.monotonic())))
                continue
            if reply.get("type") != "ack" or not isinstance(reply.get("offset"), int):
                raise UnexpectedReply(f"unexpected reply {reply.get('type')}")
            return Ack(
                room=room,
                offset=reply["offset"],
                key=key,
                duplicate=reply.get("duplicate") is True,
                attempts=attempts,
            )

    async def send(self, data: Any, *, user: Optional[str] = None, session: Optional[str] = None) -> None:
        """Sends ``data`` directly to a ``user`` (every connection of theirs) or
        a ``session``; returns when the server accepted it for delivery."""
        if (user is None) == (session is None):
            raise ValueError("give exactly one of user= and session=")
        to = {"user": user} if user is not None else {"session": session}
        await self._request({"type": "send", "to": to, "data": data})

    async def presence(self, room: str) -> List[Member]:
        """The members of ``room``."""
        reply = await self._request({"type": "presence", "room": room})
        return [Member.from_frame(m) for m in reply.get("members") or []]

    async def rpc(self, method: str, data: Any = None) -> Any:
        """Calls ``method`` on the application's backend (the node's RPC proxy)."""
        reply = await self._request({"type": "rpc", "method": method, "data": data})
        return reply.get("data")

    async def ping(self) -> float:
        """A protocol ``ping``; returns the round-trip time in seconds."""
        started = time.monotonic()
        await self._request({"type": "ping"})
        return time.monotonic() - started


def _seconds(ms: Any) -> Optional[float]:
    if isinstance(ms, (int, float)) and not isinstance(ms, bool):
        return max(0.0, float(ms) / 1000.0)
    return None


def _closed_cause(closed: Optional[ConnectionClosed], ws: Optional[ClientConnection] = None) -> Cause:
    rcvd = closed.rcvd if closed is not None else None
    if rcvd is None and ws is not None:
        rcvd = getattr(ws.protocol, "close_rcvd", None)
    if rcvd is None:
        return Cause("lost", message="the socket ended without a close frame")
    return Cause("closed", code=int(rcvd.code), reason=str(rcvd.reason or ""))


async def connect(url: Union[str, Sequence[str]] = "ws://127.0.0.1:8080/ws", **options: Any) -> Client:
    """Makes a :class:`Client` and connects it (returns after the first ``welcome``)."""
    client = Client(url, **options)
    await client.connect()
    return client

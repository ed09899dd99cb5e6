"""A small, independent roomcast protocol v1 client for the acceptance suite.

Written from docs/protocol.md only, on top of the Python `websockets` library,
so that it shares no code with the project's own Rust client. Every wait has a
timeout, so a missing reply fails a test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import urllib.error
import urllib.request
import uuid
from typing import Any

import msgpack
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

SUBPROTOCOLS = {"json": "roomcast.v1.json", "msgpack": "roomcast.v1.msgpack"}
CODECS = ("json", "msgpack")
RECV_TIMEOUT = 5.0
API_KEY = "test-key"
JWT_SECRET = "roomcast-acceptance-secret-0123456789abcdef"  # HS256

# Every client opened during the current test, closed by the test runner hook
# in conftest.py when the test ends (pass or fail).
_opened: list["Client"] = []


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def new_room(prefix: str = "t") -> str:
    """A room name no other test uses (letters, digits, '-' and ':' only)."""
    return f"{prefix}:{uuid.uuid4().hex[:16]}"


def member_key(member: dict) -> tuple[str, str]:
    return (member["user"], member["session"])


class Client:
    """One WebSocket connection speaking one codec."""

    def __init__(self, ws: ClientConnection, codec: str):
        self.ws = ws
        self.codec = codec
        self.pending: list[dict] = []  # frames read while waiting for others
        self.received: list[dict] = []  # every decoded frame, for diagnostics
        self.welcome: dict | None = None
        self._ids = itertools.count(1)

    # -- identity -----------------------------------------------------------

    @property
    def session(self) -> str:
        assert self.welcome is not None, "no welcome yet"
        return self.welcome["session"]

    @property
    def user(self) -> str:
        assert self.welcome is not None, "no welcome yet"
        return self.welcome["user"]

    @property
    def me(self) -> tuple[str, str]:
        return (self.user, self.session)

    def next_id(self) -> int:
        return next(self._ids)

    # -- wire ---------------------------------------------------------------

    def encode(self, frame: Any) -> str | bytes:
        if self.codec == "msgpack":
            return msgpack.packb(frame, use_bin_type=True)
        return json.dumps(frame, separators=(",", ":"), ensure_ascii=False)

    async def send(self, frame: Any) -> None:
        await self.ws.send(self.encode(frame))

    async def send_raw(self, payload: str | bytes) -> None:
        await self.ws.send(payload)

    async def _read(self, timeout: float) -> dict:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        if self.codec == "msgpack":
            assert isinstance(raw, bytes), (
                f"msgpack connection got a text frame, expected binary: {raw!r:.300}"
            )
            frame = msgpack.unpackb(raw, raw=False)
        else:
            assert isinstance(raw, str), (
                f"JSON connection got a binary frame, expected text: {raw!r:.300}"
            )
            frame = json.loads(raw)
        assert isinstance(frame, dict), f"frame is not a map: {frame!r:.300}"
        assert isinstance(frame.get("type"), str), f"frame without a type: {frame!r:.300}"
        self.received.append(frame)
        return frame

    async def recv(self, timeout: float = RECV_TIMEOUT) -> dict:
        """The next frame in arrival order (frames stashed by expect() first)."""
        if self.pending:
            return self.pending.pop(0)
        try:
            return await self._read(timeout)
        except asyncio.TimeoutError:
            raise AssertionError(
                f"[{self.codec}] no frame within {timeout}s; last frames: {self.received[-5:]}"
            ) from None

    async def expect(self, type_: str, timeout: float = RECV_TIMEOUT, **fields: Any) -> dict:
        """The first frame of `type_` whose fields equal `fields`; frames that
        do not match are kept (in order) for later recv()/expect() calls."""

        def matches(frame: dict) -> bool:
            return frame["type"] == type_ and all(
                k in frame and frame[k] == v for k, v in fields.items()
            )

        for i, frame in enumerate(self.pending):
            if matches(frame):
                return self.pending.pop(i)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            try:
                if remaining <= 0:
                    raise asyncio.TimeoutError
                frame = await self._read(remaining)
            except asyncio.TimeoutError:
                raise AssertionError(
                    f"[{self.codec}] no {type_!r} frame with {fields} within {timeout}s; "
                    f"other frames received meanwhile: {self.pending[-10:]}"
                ) from None
            if matches(frame):
                return frame
            self.pending.append(frame)

    async def no_frame(self, timeout: float = 0.4, type_: str | None = None) -> None:
        """Asserts that no frame (of `type_`, if given) arrives within `timeout`."""
        stale = [f for f in self.pending if type_ is None or f["type"] == type_]
        assert not stale, f"[{self.codec}] unexpected frames: {stale}"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (remaining := deadline - loop.time()) > 0:
            try:
                frame = await self._read(remaining)
            except asyncio.TimeoutError:
                return
            if type_ is None or frame["type"] == type_:
                raise AssertionError(f"[{self.codec}] unexpected frame: {frame}")
            self.pending.append(frame)

    async def request(self, frame: dict, reply: str, timeout: float = RECV_TIMEOUT) -> dict:
        """Sends `frame` with an `id` (one is assigned when absent) and returns
        the reply of type `reply` carrying the same id. An `error` with that id
        fails the test with the error shown."""
        frame = dict(frame)
        frame.setdefault("id", self.next_id())
        await self.send(frame)
        got = await self.expect_any_id(frame["id"], timeout)
        assert got["type"] == reply, f"[{self.codec}] sent {frame}, expected {reply!r}, got {got}"
        return got

    async def expect_any_id(self, id_: int, timeout: float) -> dict:
        """The first frame (of any type) whose `id` equals `id_`."""
        for i, f in enumerate(self.pending):
            if f.get("id") == id_:
                return self.pending.pop(i)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            try:
                if remaining <= 0:
                    raise asyncio.TimeoutError
                f = await self._read(remaining)
            except asyncio.TimeoutError:
                raise AssertionError(
                    f"[{self.codec}] no reply with id {id_} within {timeout}s; "
                    f"frames received meanwhile: {self.pending[-10:]}"
                ) from None
            if f.get("id") == id_:
                return f
            self.pending.append(f)

    async def error_for(self, frame: dict, code: str, timeout: float = RECV_TIMEOUT) -> dict:
        """Sends `frame` (with an id) and asserts an `error` with `code` and that id."""
        frame = dict(frame)
        frame.setdefault("id", self.next_id())
        await self.send(frame)
        got = await self.expect_any_id(frame["id"], timeout)
        assert got["type"] == "error", f"[{self.codec}] sent {frame}, expected error {code}, got {got}"
        assert got["code"] == code, f"[{self.codec}] sent {frame}, expected error {code}, got {got}"
        assert isinstance(got.get("message"), str), f"error without a message: {got}"
        return got

    # -- commands -----------------------------------------------------------

    async def hello(self, **fields: Any) -> dict:
        frame = {"type": "hello", **fields}
        welcome = await self.request(frame, "welcome")
        self.welcome = welcome
        return welcome

    async def join(self, room: str, **fields: Any) -> dict:
        joined = await self.request({"type": "join", "room": room, **fields}, "joined")
        assert joined["room"] == room, joined
        return joined

    async def leave(self, room: str) -> dict:
        return await self.request({"type": "leave", "room": room}, "left")

    async def publish(self, room: str, data: Any) -> int:
        """Publishes with an id and returns the acked offset."""
        ack = await self.request({"type": "publish", "room": room, "data": data}, "ack")
        assert is_int(ack.get("offset")), f"publish ack without an integer offset: {ack}"
        return ack["offset"]

    async def ping(self) -> dict:
        return await self.request({"type": "ping"}, "pong")

    # -- closing ------------------------------------------------------------

    async def expect_close(self, timeout: float = RECV_TIMEOUT) -> tuple[int | None, list[dict]]:
        """Reads until the server closes; returns (close code, frames read)."""
        frames = list(self.pending)
        self.pending.clear()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise asyncio.TimeoutError
                frames.append(await self._read(remaining))
        except asyncio.TimeoutError:
            raise AssertionError(
                f"[{self.codec}] connection not closed within {timeout}s; frames: {frames[-10:]}"
            ) from None
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else None
            return code, frames

    def abort(self) -> None:
        """Drops the TCP connection without a close handshake (a crash, a
        pulled cable)."""
        self.ws.transport.abort()

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.ws.close(), 1.0)
        except Exception:
            self.ws.transport.abort()


async def open_client(
    url: str,
    codec: str | None = "json",
    *,
    compression: str | None = "deflate",
    headers: dict | None = None,
    subprotocols: list[str] | None = None,
) -> Client:
    """Opens a connection offering the codec's subprotocol (codec None: no
    subprotocol offered at all, which means JSON)."""
    kwargs: dict[str, Any] = dict(
        compression=compression,
        open_timeout=5,
        close_timeout=1,
        ping_interval=None,
        max_size=1 << 20,
    )
    if subprotocols is not None:
        kwargs["subprotocols"] = subprotocols
    elif codec is not None:
        kwargs["subprotocols"] = [SUBPROTOCOLS[codec]]
    if headers:
        kwargs["additional_headers"] = headers
    ws = await connect(url, **kwargs)
    client = Client(ws, codec or "json")
    _opened.append(client)
    if codec is not None and subprotocols is None:
        assert ws.subprotocol == SUBPROTOCOLS[codec], (
            f"offered {SUBPROTOCOLS[codec]}, server selected {ws.subprotocol!r}"
        )
    return client


async def hello_client(url: str, codec: str = "json", **hello_fields: Any) -> Client:
    client = await open_client(url, codec)
    await client.hello(**hello_fields)
    return client


async def close_all() -> None:
    clients = list(_opened)
    _opened.clear()
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


# -- HTTP ----------------------------------------------------------------------


class HttpResponse:
    def __init__(self, status: int, headers: dict, body: bytes):
        self.status = status
        self.headers = headers  # lower-case names
        self.body = body

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            raise AssertionError(f"HTTP {self.status} body is not JSON: {self.body[:300]!r}") from None

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def __repr__(self) -> str:
        return f"<HTTP {self.status} {self.body[:300]!r}>"


def http(
    base: str,
    method: str,
    path: str,
    body: Any = None,
    key: str | None = API_KEY,
    timeout: float = 5.0,
) -> HttpResponse:
    data = None
    headers = {}
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return HttpResponse(resp.status, _headers(resp.headers), resp.read())
    except urllib.error.HTTPError as err:
        return HttpResponse(err.code, _headers(err.headers), err.read())


def _headers(message) -> dict:
    """Response headers with lower-case names (HTTP names are case-insensitive)."""
    return {k.lower(): v for k, v in message.items()}


async def ahttp(*args: Any, **kwargs: Any) -> HttpResponse:
    """http() off the event loop, so open connections keep being read."""
    return await asyncio.to_thread(http, *args, **kwargs)

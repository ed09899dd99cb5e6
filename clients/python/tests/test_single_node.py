"""The client against one real node (in-memory engine, anonymous access)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, List

import pytest
from conftest import api_history, api_publish, free_port, http_json, new_room, track

import roomcast
from roomcast import Backoff, Client, Message, Position, StateChanged

WAIT = 5.0


async def connected(url: Any, **options: Any) -> Client:
    client = track(Client(url, **options))
    await asyncio.wait_for(client.connect(), 10)
    return client


async def take(sub: Any, n: int, timeout: float = WAIT) -> List[Any]:
    return [await sub.get(timeout) for _ in range(n)]


async def nothing_more(sub: Any, wait: float = 0.3) -> None:
    await asyncio.sleep(wait)
    assert sub.pending() == 0, f"unexpected: {sub._queue.get_nowait()}"


async def wait_state(events: Any, state: str, timeout: float = WAIT) -> StateChanged:
    deadline = time.monotonic() + timeout
    while True:
        event = await events.get(max(0.01, deadline - time.monotonic()))
        if isinstance(event, StateChanged) and event.state == state:
            return event


async def test_join_publish_ack_and_the_messages_iterator(gateway: Any, codec: str) -> None:
    a = await connected(gateway.ws, codec=codec)
    b = await connected(gateway.ws, codec=codec)
    assert a.session is not None and a.session.subprotocol == f"roomcast.v1.{codec}"
    room = new_room()
    a_msgs, b_msgs = a.messages(room), b.messages()
    joined = await a.join(room)
    assert joined.room == room and joined.offset == 0 and joined.recovered is None
    await b.join(room)

    acks = [await a.publish(room, {"n": i, "text": "héllo"}) for i in range(1, 6)]
    assert [ack.offset for ack in acks] == [1, 2, 3, 4, 5]
    assert all(not ack.duplicate and ack.attempts == 1 for ack in acks)
    assert len({ack.key for ack in acks}) == 5, "a key per publish"

    got_b = await take(b_msgs, 5)
    assert [m.data for m in got_b] == [{"n": i, "text": "héllo"} for i in range(1, 6)]
    assert [m.offset for m in got_b] == [1, 2, 3, 4, 5]
    assert all(m.room == room and m.epoch == joined.epoch and not m.replayed for m in got_b)
    assert all(m.sender is not None and m.sender.user == a.session.user for m in got_b)
    # the publisher gets its own copies, at the offsets of its acks
    assert [m.offset for m in await take(a_msgs, 5)] == [ack.offset for ack in acks]
    assert a.position(room) == Position(5, joined.epoch)

    # `async for` over a room's messages
    seen = []
    await b.publish(room, "last")
    async for msg in a_msgs:
        seen.append(msg)
        break
    assert seen[0].data == "last" and seen[0].offset == 6
    await nothing_more(a_msgs)


async def test_messages_of_one_room_and_of_all(gateway: Any) -> None:
    client = await connected(gateway.ws)
    one, two = new_room(), new_room()
    everything, only_one = client.messages(), client.messages(one)
    await client.join(one)
    await client.join(two)
    await client.publish(one, 1)
    await client.publish(two, 2)
    await client.publish(one, 3)
    assert [(m.room, m.data) for m in await take(everything, 3)] == [(one, 1), (two, 2), (one, 3)]
    assert [m.data for m in await take(only_one, 2)] == [1, 3]
    await client.leave(two)
    assert client.rooms == [one]
    await api_publish_async(gateway, two, "after leave")
    await nothing_more(everything)
    only_one.close()
    with pytest.raises(roomcast.ClientClosed):
        await only_one.get(1)
    await client.close()
    assert [e async for e in everything] == []  # ends when the client stops


async def api_publish_async(gw: Any, room: str, data: Any, key: Any = None) -> Any:
    return await asyncio.to_thread(api_publish, gw, room, data, key)


async def test_direct_messages_to_a_user_and_to_a_session(gateway: Any, codec: str) -> None:
    a = await connected(gateway.ws, codec=codec)
    b = await connected(gateway.ws, codec=codec)
    assert a.session and b.session
    directs = b.directs()
    await a.send({"to": "user"}, user=b.session.user)
    await a.send({"to": "session"}, session=b.session.session)
    got = await take(directs, 2)
    assert [d.data for d in got] == [{"to": "user"}, {"to": "session"}]
    assert all(d.sender is not None and d.sender.session == a.session.session for d in got)
    await a.send("nobody home", user="no-such-user")  # accepted, delivered to nobody
    with pytest.raises(ValueError):
        await a.send("x")
    await nothing_more(directs)


async def test_presence_list_and_events(gateway: Any) -> None:
    a = await connected(gateway.ws)
    b = await connected(gateway.ws)
    assert a.session and b.session
    room = new_room()
    events = a.events()
    await a.join(room, presence=True)
    await b.join(room)
    members = await a.presence(room)
    assert {(m.user, m.session) for m in members} == {
        (a.session.user, a.session.session),
        (b.session.user, b.session.session),
    }
    changes = []
    while len(changes) < 2:
        event = await events.get(WAIT)
        if isinstance(event, roomcast.PresenceChanged):
            changes.append(event)
        if len(changes) == 1:
            await b.leave(room)
    assert [(c.kind, c.room, c.member.session) for c in changes] == [
        ("join", room, b.session.session),
        ("leave", room, b.session.session),
    ]


async def test_server_errors_are_exceptions_with_code_and_message(gateway: Any, codec: str) -> None:
    client = await connected(gateway.ws, codec=codec)
    room = new_room()
    with pytest.raises(roomcast.NotJoined) as err:
        await client.publish(room, "not joined")
    assert err.value.code == "not_joined" and room in err.value.message
    assert isinstance(err.value, roomcast.ServerError) and isinstance(err.value, roomcast.RoomcastError)
    with pytest.raises(roomcast.BadRequest) as bad:
        await client.join("bad room name!")
    assert bad.value.code == "bad_request" and bad.value.message
    with pytest.raises(roomcast.NotJoined):
        await client.leave(room)
    with pytest.raises(ValueError):
        await client.publish(room, 1, key="spaces are not allowed")
    assert client.rooms == []
    await client.close()
    with pytest.raises(roomcast.ClientClosed) as closed:
        await client.join(room)
    assert closed.value.code == "closed"


async def test_a_repeated_key_is_stored_once_and_acked_as_duplicate(gateway: Any) -> None:
    client = await connected(gateway.ws)
    room = new_room()
    msgs = client.messages(room)
    await client.join(room)
    first = await client.publish(room, {"v": 1}, key="order-42")
    again = await client.publish(room, {"v": 2}, key="order-42")
    assert (first.offset, first.duplicate) == (1, False)
    assert (again.offset, again.duplicate) == (1, True)
    http = await api_publish_async(gateway, room, {"v": 3}, key="order-42")
    assert http["offset"] == 1 and http["duplicate"] is True
    assert [m.data for m in await take(msgs, 1)] == [{"v": 1}]
    await nothing_more(msgs)
    history = await asyncio.to_thread(api_history, gateway, room)
    assert [m["data"] for m in history["messages"]] == [{"v": 1}]


async def test_resume_after_a_dropped_socket_delivers_the_missed_messages_once(gateway: Any, codec: str) -> None:
    client = await connected(gateway.ws, codec=codec)
    room = new_room()
    msgs, events = client.messages(room), client.events()
    await client.join(room)
    for i in range(1, 4):
        await client.publish(room, i)
    assert client.drop_connection_for_test(reconnect_after=0.5)
    for i in range(4, 9):
        await api_publish_async(gateway, room, i)  # while the client is away
    state = await wait_state(events, "connected")
    assert state.resumed is True and state.restored["resumed"] == [room]
    got = await take(msgs, 8)
    assert [m.data for m in got] == list(range(1, 9))
    assert [m.replayed for m in got] == [False] * 3 + [True] * 5
    await client.publish(room, 9)
    nine = await msgs.get(WAIT)
    assert (nine.data, nine.replayed) == (9, False)
    await nothing_more(msgs)


async def test_an_unresumable_session_rejoins_with_since_and_recovers(gateway: Any) -> None:
    client = await connected(gateway.ws)
    assert client.session
    room = new_room()
    msgs, events = client.messages(room), client.events()
    await client.join(room)
    await client.publish(room, 1)
    await take(msgs, 1)
    old_session = client.session.session
    # The socket is cut (the client comes back after 1 s) and the API ends
    # the parked session, so it cannot be resumed.
    assert client.drop_connection_for_test(reconnect_after=1.0)
    await asyncio.sleep(0.2)
    await asyncio.to_thread(http_json, "POST", f"{gateway.http}/api/disconnect", {"session": old_session})
    await api_publish_async(gateway, room, 2)
    await api_publish_async(gateway, room, 3)
    state = await wait_state(events, "connected")
    assert state.resumed is False and state.restored["rejoined"] == [room]
    assert client.session and client.session.session != old_session
    got = await take(msgs, 2)
    assert [(m.data, m.offset, m.replayed) for m in got] == [(2, 2, True), (3, 3, True)]
    await nothing_more(msgs)


async def test_join_with_since_replays_from_there(gateway: Any) -> None:
    client = await connected(gateway.ws)
    room = new_room()
    joined = await client.join(room)
    for i in range(1, 6):
        await client.publish(room, i)
    await client.leave(room)
    msgs = client.messages(room)
    again = await client.join(room, since=Position(2, joined.epoch))
    assert again.recovered is True and again.offset == 5
    got = await take(msgs, 3)
    assert [(m.data, m.replayed) for m in got] == [(3, True), (4, True), (5, True)]
    await client.leave(room)
    stale = await client.join(room, since=Position(2, "another-epoch"))
    assert stale.recovered is False
    await nothing_more(msgs)


async def test_the_heartbeat_watchdog_replaces_a_silent_connection(own_gateway: Any) -> None:
    gw = own_gateway({"ROOMCAST_HEARTBEAT__PING_INTERVAL_MS": "500", "ROOMCAST_HEARTBEAT__PONG_TIMEOUT_MS": "5000"})
    client = await connected(gw.ws, heartbeat_slack=1.0, backoff=Backoff(base=0.05, cap=0.2))
    assert client.session and client.session.ping_interval == 0.5
    room = new_room()
    await client.join(room)
    events = client.events()
    await asyncio.sleep(1.5)  # the node's pings keep a quiet connection alive
    assert client.state == "connected" and events.pending() == 0
    gw.signal(signal.SIGSTOP)  # the node stops answering (its socket stays open)
    frozen_at = time.monotonic()
    try:
        reconnecting = await wait_state(events, "reconnecting", timeout=5)
        took = time.monotonic() - frozen_at
        assert reconnecting.cause is not None and reconnecting.cause.kind == "heartbeat"
        assert 0.5 <= took <= 3.0, took  # ping interval (0.5) + slack (1.0) after the last byte
    finally:
        gw.signal(signal.SIGCONT)
    state = await wait_state(events, "connected", timeout=10)
    assert state.resumed is True and state.restored["resumed"] == [room]
    assert (await client.publish(room, "after")).offset == 1


async def test_attempts_rotate_through_the_urls(gateway: Any) -> None:
    dead = f"ws://127.0.0.1:{free_port()}/ws"
    client = await connected([dead, gateway.ws], backoff=Backoff(base=0.01, cap=0.05))
    assert client.session and client.session.url == gateway.ws


async def test_a_client_that_never_connects_gives_up() -> None:
    dead = f"ws://127.0.0.1:{free_port()}/ws"
    client = track(Client(dead, backoff=Backoff(base=0.01, cap=0.02, max_attempts=3)))
    events = client.events()
    with pytest.raises(roomcast.GaveUp) as err:
        await asyncio.wait_for(client.connect(), 10)
    assert err.value.code == "gave_up" and err.value.details["attempts"] == 3
    states = [e.state for e in [e async for e in events] if isinstance(e, StateChanged)]
    assert states.count("connecting") == 3 and states[-1] == "disconnected"


def test_backoff_is_exponential_with_full_jitter() -> None:
    backoff = Backoff(base=0.25, cap=15.0)
    assert [backoff.ceiling(n) for n in range(8)] == [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 15.0]
    delays = [backoff.delay(3) for _ in range(2000)]
    assert all(0 <= d <= 2.0 for d in delays)
    assert min(delays) < 0.2 and max(delays) > 1.8  # spread over the whole window
    assert backoff.delay(5, rand=lambda: 0.5) == 4.0
    assert not Backoff().exhausted(100) and Backoff(max_attempts=2).exhausted(2)


def test_message_is_a_plain_value() -> None:
    m = Message(room="r", offset=1, epoch="e", data={"a": 1})
    assert m.replayed is False and m.sender is None


def test_the_readme_example_runs(gateway: Any, tmp_path: Any) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    example = readme.split("```python\n", 1)[1].split("```", 1)[0]
    script = tmp_path / "hello.py"
    script.write_text(example)
    done = subprocess.run(
        [sys.executable, str(script), gateway.ws], capture_output=True, text=True, timeout=30, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("connected as anon-")
    assert lines[1].startswith("stored at offset ") and " with key py-" in lines[1]
    assert lines[2].endswith(": {'text': 'hi'}")
    assert lines[3].startswith("members: ['anon-")
    assert lines[4] == "refused: not_joined - join elsewhere before publishing to it"


def test_the_duplicate_filter_by_offset_and_epoch() -> None:
    from roomcast._state import DELIVER, DUPLICATE, RESTART, Positions

    p = Positions()
    assert p.admit("r", "e1", 5) == RESTART
    assert [p.admit("r", "e1", o) for o in (6, 6, 4, 7)] == [DELIVER, DUPLICATE, DUPLICATE, DELIVER]
    p.replay_from("r", Position(3, "e1"))  # never moves back over delivered messages
    assert p.get("r") == Position(7, "e1")
    assert p.admit("r", "e2", 1) == RESTART  # a new epoch: offsets start again
    p.advance_to("r", Position(0, "e2"))
    assert p.get("r") == Position(1, "e2")


def test_the_installed_package_is_the_wheel_with_its_version_and_types() -> None:
    from importlib import metadata
    from importlib.resources import files

    assert metadata.version("roomcast") == roomcast.__version__
    assert "site-packages" in roomcast.__file__, roomcast.__file__  # the wheel, not the source tree
    assert files("roomcast").joinpath("py.typed").is_file()
    requires = metadata.requires("roomcast") or []
    assert any(r.startswith("websockets") for r in requires)
    assert any("msgpack" in r and "extra" in r for r in requires)

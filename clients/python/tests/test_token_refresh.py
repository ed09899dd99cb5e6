"""Token lifetime against a real node with HS256 JWT auth (`auth.jwt_secret`):
`welcome.token_expires_at`, `refresh` → `refreshed`, refusals, rooms left
after a narrowing refresh, and the 4401 `token expired` close."""

from __future__ import annotations

import asyncio
import time
from typing import Any, List

import pytest
from conftest import JWT_SECRET, Gateway, api_publish, http_json, make_token, new_room, track

import roomcast
from roomcast import Client, RoomLeft, StateChanged, TokenRefreshed

ALL_ROOMS = ["*"]


@pytest.fixture(scope="module")
def jwt_gateway() -> Any:
    gw = Gateway({"ROOMCAST_AUTH__JWT_SECRET": JWT_SECRET}, name="jwt")
    yield gw
    gw.stop()


def of(events: List[Any], kind: type) -> List[Any]:
    return [e for e in events if isinstance(e, kind)]


async def everything(sub: Any) -> List[Any]:
    out = []
    while sub.pending():
        out.append(await sub.get(0))
    return out


async def test_a_token_callback_keeps_the_connection_past_exp_and_a_fixed_token_gets_4401(jwt_gateway: Any) -> None:
    calls = 0

    async def provider() -> str:  # an async callback
        nonlocal calls
        calls += 1
        return make_token("alice", ttl=3.5, rooms=ALL_ROOMS)

    refreshing = track(Client(jwt_gateway.ws, token_provider=provider, refresh_lead=1.5))
    fixed = track(Client(jwt_gateway.ws, token=make_token("bob", ttl=3.5, rooms=ALL_ROOMS)))
    r_events, f_events = refreshing.events(), fixed.events()
    r_session = await asyncio.wait_for(refreshing.connect(), 10)
    f_session = await asyncio.wait_for(fixed.connect(), 10)
    first_exp = r_session.token_expires_at
    assert first_exp is not None and 2 <= first_exp - time.time() <= 4
    assert f_session.token_expires_at is not None and f_session.user == "bob"
    room = new_room()
    await refreshing.join(room)
    await fixed.join(room)

    # The fixed token runs out: the node closes with 4401 "token expired",
    # and a client without a callback stops (its token would be refused).
    with pytest.raises(roomcast.Unauthorized) as stopped:
        await wait_stopped(fixed, f_events, 10)
    error = stopped.value
    assert error.details["close_code"] == 4401 and "token expired" in error.message
    closed_after = time.time() - f_session.token_expires_at
    assert -0.5 <= closed_after <= 5.5, closed_after

    # The other one refreshed before each expiry and is still on its first connection.
    while time.time() < first_exp + 2.0:
        await asyncio.sleep(0.1)
    assert refreshing.state == "connected"
    seen = await everything(r_events)
    assert [s.state for s in of(seen, StateChanged)] == ["connecting", "connected"], seen
    refreshed = of(seen, TokenRefreshed)
    assert len(refreshed) >= 1 and refreshed[-1].expires_at > first_exp
    assert refreshing.token_expires_at == refreshed[-1].expires_at
    assert calls - len(refreshed) in (1, 2)  # the first connection, and perhaps a refresh under way
    assert (await refreshing.publish(room, "still here")).offset == 1


async def wait_stopped(client: Client, events: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        event = await events.get(max(0.01, deadline - time.monotonic()))
        if isinstance(event, StateChanged) and event.state == "disconnected":
            assert event.error is not None
            raise event.error


async def test_refusals_keep_the_old_expiry(jwt_gateway: Any) -> None:
    client = track(Client(jwt_gateway.ws, token=make_token("carol", ttl=60, rooms=ALL_ROOMS)))
    session = await asyncio.wait_for(client.connect(), 10)
    old = session.token_expires_at
    with pytest.raises(roomcast.Forbidden) as other_user:
        await client.refresh(make_token("mallory", ttl=120, rooms=ALL_ROOMS))
    assert other_user.value.code == "forbidden"
    with pytest.raises(roomcast.Unauthorized):
        await client.refresh(make_token("carol", ttl=-60, rooms=ALL_ROOMS))  # expired
    with pytest.raises(roomcast.Unauthorized):
        await client.refresh("not-a-jwt")
    assert client.token_expires_at == old
    newer = await client.refresh(make_token("carol", ttl=300, rooms=ALL_ROOMS))
    assert newer is not None and old is not None and newer > old
    assert client.state == "connected"


async def test_a_refresh_that_narrows_the_rooms_leaves_the_others(jwt_gateway: Any) -> None:
    keep, drop = new_room("keep"), new_room("drop")
    client = track(Client(jwt_gateway.ws, token=make_token("dave", ttl=60, rooms=["keep:*", "drop:*"])))
    await asyncio.wait_for(client.connect(), 10)
    events, messages = client.events(), client.messages()
    await client.join(keep)
    await client.join(drop)
    await client.refresh(make_token("dave", ttl=60, rooms=["keep:*"]))
    left = None
    while left is None:
        event = await events.get(5)
        if isinstance(event, RoomLeft):
            left = event
    assert (left.room, left.reason) == (drop, "forbidden")
    assert client.rooms == [keep]
    await asyncio.to_thread(api_publish, jwt_gateway, drop, "gone")
    await asyncio.to_thread(api_publish, jwt_gateway, keep, "kept")
    got = await messages.get(5)
    assert (got.room, got.data) == (keep, "kept")
    await asyncio.sleep(0.2)
    assert messages.pending() == 0


async def test_after_4401_a_callback_s_fresh_token_resumes_the_session(jwt_gateway: Any) -> None:
    stale = make_token("erin", ttl=2.5, rooms=ALL_ROOMS)
    fresh_for_new_connections = False

    def provider() -> str:  # a plain callback
        # While connected it can only repeat the expiring token (a backend
        # that cannot mint one right now); a new connection gets a fresh one.
        if client.state == "connected" or not fresh_for_new_connections:
            return stale
        return make_token("erin", 60, rooms=ALL_ROOMS)

    client = track(Client(jwt_gateway.ws, token_provider=provider))
    events = client.events()
    session = await asyncio.wait_for(client.connect(), 10)
    fresh_for_new_connections = True
    room = new_room()
    await client.join(room)
    reconnecting = None
    while reconnecting is None:
        event = await events.get(10)
        if isinstance(event, StateChanged) and event.state == "reconnecting":
            reconnecting = event
    cause = reconnecting.cause
    assert cause is not None and (cause.kind, cause.code, cause.reason) == ("closed", 4401, "token expired")
    state = await client.wait_connected(10)
    assert state.resumed is True and state.session == session.session
    assert state.token_expires_at is not None and state.token_expires_at > time.time() + 30
    assert client.rooms == [room]
    assert (await client.publish(room, "back")).offset == 1


async def test_a_refused_fixed_token_stops_the_client(jwt_gateway: Any) -> None:
    import jwt as pyjwt

    bad = pyjwt.encode({"sub": "x", "exp": int(time.time()) + 60}, "another-secret-0123456789abcdef", "HS256")
    client = track(Client(jwt_gateway.ws, token=bad))
    with pytest.raises(roomcast.Unauthorized) as err:
        await asyncio.wait_for(client.connect(), 10)
    assert err.value.code == "unauthorized"
    assert client.state == "disconnected"


async def test_server_side_subscriptions_are_rooms_like_any_other(jwt_gateway: Any) -> None:
    room = new_room("subs")
    client = track(Client(jwt_gateway.ws, token=make_token("frank", ttl=60, rooms=ALL_ROOMS, subs=[room])))
    messages = client.messages(room)
    await asyncio.wait_for(client.connect(), 10)
    deadline = time.monotonic() + 5
    while client.rooms != [room]:  # the node's `joined` (no id) follows `welcome`
        assert time.monotonic() < deadline, client.rooms
        await asyncio.sleep(0.02)
    await asyncio.to_thread(api_publish, jwt_gateway, room, "pushed")
    assert (await messages.get(5)).data == "pushed"
    assert (await client.publish(room, "mine")).offset == 2
    assert (await messages.get(5)).data == "mine"

    # A fresh session (the socket cut, the parked session ended by the API):
    # the node joins the subscription again without `since`, so what was
    # published meanwhile is not replayed, and the client says so instead of
    # skipping it silently.
    events = client.events()
    assert client.session is not None
    session = client.session.session
    assert client.drop_connection_for_test(reconnect_after=1.0)
    await asyncio.sleep(0.2)
    await asyncio.to_thread(http_json, "POST", f"{jwt_gateway.http}/api/disconnect", {"session": session})
    await asyncio.to_thread(api_publish, jwt_gateway, room, "missed")
    failed = None
    while failed is None:
        event = await events.get(5)
        if isinstance(event, roomcast.RecoveryFailed):
            failed = event
    assert (failed.room, failed.offset) == (room, 3)
    assert client.rooms == [room] and client.session is not None and client.session.session != session
    await asyncio.to_thread(api_publish, jwt_gateway, room, "live again")
    assert (await messages.get(5)).data == "live again"
    await asyncio.sleep(0.2)
    assert messages.pending() == 0

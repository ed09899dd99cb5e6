"""Recovery with `join.since` and session resume (docs/protocol.md, "Recovery:
offsets and epochs" and "Resuming a session")."""

from __future__ import annotations

import asyncio

from rcclient import ahttp, hello_client, new_room, open_client

HISTORY_SIZE = 100  # history.size default


async def publish_n(pub, room: str, n: int, start: int = 0) -> list[int]:
    return [await pub.publish(room, {"n": start + i}) for i in range(n)]


async def assert_replayed_in_order(c, room, epoch, offsets, first_n):
    for i, off in enumerate(offsets):
        m = await c.recv()
        assert m["type"] == "message", f"expected replayed message {off}, got {m}"
        assert m["room"] == room and m["epoch"] == epoch, m
        assert m["offset"] == off, f"replay out of order: expected offset {off}, got {m}"
        assert m["data"] == {"n": first_n + i}, m


async def test_join_since_hit_replays_missed_in_order(gateway, codec):
    pub = await hello_client(gateway.ws_url, "json")
    room = new_room()
    j = await pub.join(room)
    epoch = j["epoch"]
    offsets = await publish_n(pub, room, 5)
    assert offsets == [1, 2, 3, 4, 5]

    sub = await hello_client(gateway.ws_url, codec)
    await sub.send({"type": "join", "id": 5, "room": room, "since": {"offset": 2, "epoch": epoch}})
    joined = await sub.recv()  # strictly the next frame
    assert joined["type"] == "joined", joined
    assert joined["id"] == 5 and joined["room"] == room
    assert joined["recovered"] is True, joined
    assert joined["offset"] == 5 and joined["epoch"] == epoch, joined
    await assert_replayed_in_order(sub, room, epoch, [3, 4, 5], first_n=2)
    # Then live, with no gap and no duplicate.
    await sub.no_frame(0.3)
    live = await pub.publish(room, {"n": 5})
    assert live == 6
    m = await sub.recv()
    assert m["type"] == "message" and m["offset"] == 6 and m["data"] == {"n": 5}, m
    await sub.no_frame(0.3)


async def test_join_since_edges(gateway, codec):
    pub = await hello_client(gateway.ws_url, "json")
    room = new_room()
    epoch = (await pub.join(room))["epoch"]
    await publish_n(pub, room, 3)

    # since offset 0 with the right epoch: everything.
    a = await hello_client(gateway.ws_url, codec)
    await a.send({"type": "join", "room": room, "since": {"offset": 0, "epoch": epoch}})
    j = await a.recv()
    assert j["type"] == "joined" and j["recovered"] is True and j["offset"] == 3, j
    await assert_replayed_in_order(a, room, epoch, [1, 2, 3], first_n=0)
    await a.no_frame(0.2)

    # since the latest offset: recovered, nothing to replay.
    b = await hello_client(gateway.ws_url, codec)
    await b.send({"type": "join", "room": room, "since": {"offset": 3, "epoch": epoch}})
    j = await b.recv()
    assert j["type"] == "joined" and j["recovered"] is True and j["offset"] == 3, j
    await b.no_frame(0.3)

    # since beyond the latest offset: not recoverable, nothing replayed.
    c = await hello_client(gateway.ws_url, codec)
    await c.send({"type": "join", "room": room, "since": {"offset": 9, "epoch": epoch}})
    j = await c.recv()
    assert j["type"] == "joined" and j["recovered"] is False and j["offset"] == 3, j
    await c.no_frame(0.3)


async def test_join_since_wrong_epoch_is_a_miss(gateway, codec):
    pub = await hello_client(gateway.ws_url, "json")
    room = new_room()
    epoch = (await pub.join(room))["epoch"]
    await publish_n(pub, room, 4)

    sub = await hello_client(gateway.ws_url, codec)
    await sub.send(
        {"type": "join", "id": 8, "room": room, "since": {"offset": 1, "epoch": epoch + "-old"}}
    )
    j = await sub.recv()
    assert j["type"] == "joined" and j["id"] == 8, j
    assert j["recovered"] is False, j
    assert j["offset"] == 4 and j["epoch"] == epoch, j
    await sub.no_frame(0.5)  # no partial replay
    # Joined all the same: live messages arrive.
    live = await pub.publish(room, {"n": 4})
    m = await sub.recv()
    assert m["type"] == "message" and m["offset"] == live == 5, m


async def test_join_since_beyond_history_is_a_miss(gateway, codec):
    room = new_room()
    first = None
    for i in range(HISTORY_SIZE + 5):
        r = await ahttp(gateway.http_base, "POST", "/api/publish", {"room": room, "data": {"n": i}})
        assert r.status == 200, r
        first = first or r.json()
    epoch = first["epoch"]
    assert first["offset"] == 1

    sub = await hello_client(gateway.ws_url, codec)
    await sub.send({"type": "join", "room": room, "since": {"offset": 1, "epoch": epoch}})
    j = await sub.recv()
    assert j["type"] == "joined" and j["recovered"] is False, j
    assert j["offset"] == HISTORY_SIZE + 5, j
    await sub.no_frame(0.5)

    # The last `history.size` messages are still recoverable, in order.
    since = HISTORY_SIZE + 5 - 10
    sub2 = await hello_client(gateway.ws_url, codec)
    await sub2.send({"type": "join", "room": room, "since": {"offset": since, "epoch": epoch}})
    j = await sub2.recv()
    assert j["type"] == "joined" and j["recovered"] is True, j
    await assert_replayed_in_order(
        sub2, room, epoch, list(range(since + 1, HISTORY_SIZE + 6)), first_n=since
    )


async def test_resume_after_abrupt_disconnect(gateway, codec):
    room = new_room()
    pub = await hello_client(gateway.ws_url, "json")
    epoch = (await pub.join(room))["epoch"]

    a = await hello_client(gateway.ws_url, codec)
    await a.join(room)
    o1 = await pub.publish(room, {"n": 0})
    assert (await a.expect("message", offset=o1))["data"] == {"n": 0}
    w1 = a.welcome
    a.abort()  # no close handshake

    o2 = await pub.publish(room, {"n": 1})
    o3 = await pub.publish(room, {"n": 2})
    assert (o1, o2, o3) == (1, 2, 3)

    b = await open_client(gateway.ws_url, codec)
    await b.send(
        {
            "type": "hello",
            "id": 1,
            "resume": {
                "session": w1["session"],
                "token": w1["resume_token"],
                "rooms": [{"room": room, "offset": o1, "epoch": epoch}],
            },
        }
    )
    w = await b.recv()
    assert w["type"] == "welcome" and w["id"] == 1, w
    assert w["resumed"] is True, w
    assert w["session"] == w1["session"] and w["user"] == w1["user"], w
    assert isinstance(w["resume_token"], str) and w["resume_token"], w
    assert len(w["rooms"]) == 1, w
    r = w["rooms"][0]
    assert r["room"] == room and r["epoch"] == epoch, w
    assert r["recovered"] is True, w
    assert r["offset"] == o3, f"rooms[].offset is the room's latest offset: {w}"
    b.welcome = w
    # The missed messages follow welcome, in order.
    await assert_replayed_in_order(b, room, epoch, [o2, o3], first_n=1)
    # The room was re-joined: live messages keep coming, no duplicates.
    await b.no_frame(0.3)
    o4 = await pub.publish(room, {"n": 3})
    m = await b.recv()
    assert m["type"] == "message" and m["offset"] == o4 == 4, m
    # And the resumed connection can publish as a member.
    assert await b.publish(room, "back") == 5


async def test_resume_takes_over_a_live_session(gateway, codec):
    room = new_room()
    a = await hello_client(gateway.ws_url, codec)
    j = await a.join(room)
    b = await open_client(gateway.ws_url, codec)
    w = await b.hello(
        resume={
            "session": a.session,
            "token": a.welcome["resume_token"],
            "rooms": [{"room": room, "offset": j["offset"], "epoch": j["epoch"]}],
        }
    )
    assert w["resumed"] is True and w["session"] == a.session, w
    code, frames = await a.expect_close()
    assert code == 1000, f"the old connection is closed with 1000, got {code}; {frames}"
    assert w["rooms"][0]["recovered"] is True, w


async def test_resume_with_wrong_token_starts_fresh(gateway, codec):
    room = new_room()
    a = await hello_client(gateway.ws_url, codec)
    j = await a.join(room)
    b = await open_client(gateway.ws_url, codec)
    w = await b.hello(
        resume={
            "session": a.session,
            "token": a.welcome["resume_token"] + "x",
            "rooms": [{"room": room, "offset": 0, "epoch": j["epoch"]}],
        }
    )
    assert w["resumed"] is False, w
    assert w["session"] != a.session, w
    assert w["rooms"] == [], w
    # Not a member of the room on the new session; the old one is untouched.
    await b.error_for({"type": "publish", "room": room, "data": 1}, "not_joined")
    await a.ping()


async def test_resume_unknown_session_starts_fresh(gateway, codec):
    b = await open_client(gateway.ws_url, codec)
    w = await b.hello(resume={"session": "no-such-session", "token": "nope", "rooms": []})
    assert w["resumed"] is False and w["session"] != "no-such-session" and w["rooms"] == [], w


async def test_resume_after_clean_close(gateway, codec):
    """A session stays resumable after its connection ends (session TTL)."""
    room = new_room()
    pub = await hello_client(gateway.ws_url, "json")
    epoch = (await pub.join(room))["epoch"]
    a = await hello_client(gateway.ws_url, codec)
    await a.join(room)
    w1 = a.welcome
    await a.close()
    await asyncio.sleep(0.1)
    o1 = await pub.publish(room, {"n": 0})
    b = await open_client(gateway.ws_url, codec)
    w = await b.hello(
        resume={
            "session": w1["session"],
            "token": w1["resume_token"],
            "rooms": [{"room": room, "offset": 0, "epoch": epoch}],
        }
    )
    assert w["resumed"] is True and w["session"] == w1["session"], w
    assert w["rooms"][0]["recovered"] is True, w
    await assert_replayed_in_order(b, room, epoch, [o1], first_n=0)

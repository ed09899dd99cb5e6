"""Every client frame of protocol v1 with its documented reply, in both codecs
(docs/protocol.md, "Frames")."""

from __future__ import annotations

import json

import msgpack
import pytest
from websockets.exceptions import InvalidStatus

from rcclient import SUBPROTOCOLS, hello_client, is_int, member_key, new_room, open_client


def assert_member(member: dict, client) -> None:
    assert isinstance(member, dict), member
    assert member["user"] == client.user, member
    assert member["session"] == client.session, member


# -- connecting ------------------------------------------------------------------


async def test_hello_welcome(gateway, codec):
    c = await open_client(gateway.ws_url, codec)
    w = await c.hello(id=1)
    assert w["type"] == "welcome"
    assert w["id"] == 1, f"welcome must echo the hello id: {w}"
    for field in ("session", "resume_token", "user", "node"):
        assert isinstance(w.get(field), str) and w[field], f"welcome.{field}: {w}"
    assert is_int(w.get("ping_interval_ms")) and w["ping_interval_ms"] > 0, w
    assert w["resumed"] is False, w
    assert w["rooms"] == [], w
    # Anonymous access: the user id is anon-<session>.
    assert w["user"] == f"anon-{w['session']}", w

    other = await hello_client(gateway.ws_url, codec)
    assert other.session != c.session
    assert other.welcome["resume_token"] != w["resume_token"]


async def test_no_subprotocol_means_json(gateway):
    c = await open_client(gateway.ws_url, None)
    assert c.ws.subprotocol is None
    w = await c.hello(id=3)  # recv() asserts the reply is a text frame
    assert w["resumed"] is False


async def test_both_subprotocols_offered_first_known_wins(gateway):
    c = await open_client(
        gateway.ws_url,
        "msgpack",
        subprotocols=[SUBPROTOCOLS["msgpack"], SUBPROTOCOLS["json"]],
    )
    assert c.ws.subprotocol == SUBPROTOCOLS["msgpack"]
    await c.hello()


async def test_unknown_subprotocol_refused_with_400(gateway):
    with pytest.raises(InvalidStatus) as info:
        await open_client(gateway.ws_url, None, subprotocols=["roomcast.v9.xml"])
    assert info.value.response.status_code == 400


async def test_first_frame_must_be_hello(gateway, codec):
    c = await open_client(gateway.ws_url, codec)
    await c.send({"type": "ping", "id": 1})
    code, frames = await c.expect_close()
    assert code == 4400, f"expected close 4400 after a non-hello first frame, got {code}; frames {frames}"
    assert not any(f["type"] == "pong" for f in frames), frames


async def test_undecodable_first_frame_closes_4400(gateway, codec):
    c = await open_client(gateway.ws_url, codec)
    await c.send_raw("{nope" if codec == "json" else b"\xc1")
    code, frames = await c.expect_close()
    assert code == 4400, f"got close {code}; frames {frames}"


# -- join / leave ----------------------------------------------------------------


async def test_join_joined(gateway, codec):
    c = await hello_client(gateway.ws_url, codec)
    room = new_room()
    j = await c.request({"type": "join", "id": 2, "room": room}, "joined")
    assert j["id"] == 2
    assert j["room"] == room
    assert is_int(j["offset"]) and j["offset"] == 0, f"a new room has offset 0: {j}"
    assert isinstance(j["epoch"], str) and j["epoch"], j
    assert "recovered" not in j or j["recovered"] is None, f"recovered only with since: {j}"

    # Joining again answers joined with the current position and changes nothing.
    off = await c.publish(room, "x")
    await c.expect("message", offset=off)
    again = await c.join(room)
    assert again["offset"] == off and again["epoch"] == j["epoch"], again
    off2 = await c.publish(room, "y")
    assert off2 == off + 1
    await c.expect("message", offset=off2)
    await c.no_frame(0.3, "message")  # still a single membership: no duplicate


async def test_leave_left(gateway, codec):
    c = await hello_client(gateway.ws_url, codec)
    room = new_room()
    await c.join(room)
    left = await c.request({"type": "leave", "id": 7, "room": room}, "left")
    assert left["id"] == 7 and left["room"] == room, left
    # Not a member any more.
    await c.error_for({"type": "leave", "room": room}, "not_joined")
    await c.error_for({"type": "publish", "room": room, "data": 1}, "not_joined")


async def test_left_room_gets_no_more_messages(gateway, codec):
    a = await hello_client(gateway.ws_url, codec)
    b = await hello_client(gateway.ws_url, "json")
    room = new_room()
    await a.join(room)
    await b.join(room)
    await a.leave(room)
    await b.publish(room, {"after": "leave"})
    await a.no_frame(0.4, "message")


# -- publish ---------------------------------------------------------------------


async def test_publish_ack_and_own_message(gateway, codec):
    a = await hello_client(gateway.ws_url, codec)
    b = await hello_client(gateway.ws_url, codec)
    room = new_room()
    ja = await a.join(room)
    await b.join(room)
    data = {"text": "hi", "n": 1, "list": [1, 2, 3], "nested": {"ok": True}}
    await a.send({"type": "publish", "id": 4, "room": room, "data": data})
    ack = await a.expect("ack", id=4)
    assert is_int(ack.get("offset")), ack
    assert ack["offset"] == ja["offset"] + 1 == 1, ack

    own = await a.expect("message", offset=ack["offset"])
    assert own["room"] == room
    assert own["epoch"] == ja["epoch"]
    assert own["data"] == data
    assert_member(own["from"], a)

    other = await b.expect("message", room=room)
    assert other["offset"] == ack["offset"]
    assert other["epoch"] == ja["epoch"]
    assert other["data"] == data
    assert_member(other["from"], a)

    # Offsets strictly increase, and every member sees them in order.
    offsets = [await a.publish(room, {"n": i}) for i in range(2, 6)]
    assert offsets == list(range(2, 6)), offsets
    seen = [(await b.expect("message", room=room))["offset"] for _ in offsets]
    assert seen == offsets


async def test_publish_without_id_has_no_ack(gateway, codec):
    c = await hello_client(gateway.ws_url, codec)
    room = new_room()
    await c.join(room)
    await c.send({"type": "publish", "room": room, "data": "quiet"})
    msg = await c.expect("message", room=room)
    assert msg["data"] == "quiet" and msg["offset"] == 1
    await c.no_frame(0.3, "ack")


async def test_publish_without_join_is_not_joined(gateway, codec):
    c = await hello_client(gateway.ws_url, codec)
    err = await c.error_for({"type": "publish", "id": 12, "room": new_room(), "data": {}}, "not_joined")
    assert err["id"] == 12


# -- send / direct ---------------------------------------------------------------


async def test_send_to_user(gateway, codec):
    a = await hello_client(gateway.ws_url, codec)
    b = await hello_client(gateway.ws_url, codec)
    data = {"text": "psst", "k": [1, {"x": None}]}
    ack = await a.request({"type": "send", "id": 5, "to": {"user": b.user}, "data": data}, "ack")
    assert ack["id"] == 5
    assert ack.get("offset") is None, f"a send ack has no offset: {ack}"
    d = await b.expect("direct")
    assert d["data"] == data
    assert_member(d["from"], a)
    await a.no_frame(0.2, "direct")  # the sender is not a recipient


async def test_send_to_session(gateway, codec):
    a = await hello_client(gateway.ws_url, codec)
    b = await hello_client(gateway.ws_url, codec)
    ack = await a.request({"type": "send", "to": {"session": b.session}, "data": "to-session"}, "ack")
    assert "offset" not in ack or ack["offset"] is None
    d = await b.expect("direct")
    assert d["data"] == "to-session"
    assert_member(d["from"], a)


async def test_send_to_nobody_is_acked(gateway, codec):
    a = await hello_client(gateway.ws_url, codec)
    ack = await a.request({"type": "send", "to": {"user": "nobody-here"}, "data": 1}, "ack")
    assert is_int(ack["id"])


async def test_send_target_must_name_exactly_one(gateway, codec):
    a = await hello_client(gateway.ws_url, codec)
    await a.error_for({"type": "send", "to": {}, "data": 1}, "bad_request")
    await a.error_for({"type": "send", "to": {"user": "u", "session": "s"}, "data": 1}, "bad_request")
    await a.ping()  # still open


# -- presence --------------------------------------------------------------------


async def test_presence_query_lists_members(gateway, codec):
    a = await hello_client(gateway.ws_url, codec)
    b = await hello_client(gateway.ws_url, "json")
    room = new_room()
    await a.join(room)
    await b.join(room)
    p = await a.request({"type": "presence", "id": 6, "room": room}, "presence")
    assert p["id"] == 6 and p["room"] == room
    assert isinstance(p["members"], list)
    assert sorted(member_key(m) for m in p["members"]) == sorted([a.me, b.me]), p

    await b.leave(room)
    p = await a.request({"type": "presence", "room": room}, "presence")
    assert [member_key(m) for m in p["members"]] == [a.me], p


async def test_presence_query_unjoined_room_with_anonymous_access(gateway, codec):
    """Anonymous access would allow joining, so asking is allowed too."""
    a = await hello_client(gateway.ws_url, codec)
    b = await hello_client(gateway.ws_url, codec)
    room = new_room()
    await b.join(room)
    p = await a.request({"type": "presence", "room": room}, "presence")
    assert [member_key(m) for m in p["members"]] == [b.me], p


async def test_presence_events(gateway, codec):
    watcher = await hello_client(gateway.ws_url, codec)
    quiet = await hello_client(gateway.ws_url, codec)  # joined without presence
    room = new_room()
    await watcher.join(room, presence=True)
    await quiet.join(room)
    ev = await watcher.expect("presence_join")
    assert ev["room"] == room
    assert_member(ev["member"], quiet)

    b = await hello_client(gateway.ws_url, "json")
    await b.join(room)
    ev = await watcher.expect("presence_join")
    assert ev["room"] == room
    assert_member(ev["member"], b)

    await b.leave(room)
    ev = await watcher.expect("presence_leave")
    assert ev["room"] == room
    assert_member(ev["member"], b)

    # A closed connection leaves all its rooms.
    await quiet.close()
    ev = await watcher.expect("presence_leave")
    assert_member(ev["member"], quiet)

    # Events are about other members, and only for presence subscribers.
    c = await hello_client(gateway.ws_url, codec)
    await c.join(room)  # no presence flag
    ev = await watcher.expect("presence_join")
    assert_member(ev["member"], c)
    d = await hello_client(gateway.ws_url, codec)
    await d.join(room)
    await watcher.expect("presence_join")
    await c.no_frame(0.3, "presence_join")
    await watcher.no_frame(0.2, "presence_join")


# -- ping ------------------------------------------------------------------------


async def test_ping_pong(gateway, codec):
    c = await hello_client(gateway.ws_url, codec)
    pong = await c.request({"type": "ping", "id": 7}, "pong")
    assert pong["id"] == 7
    await c.send({"type": "ping"})
    pong = await c.expect("pong")
    assert pong.get("id") is None, pong


# -- errors ----------------------------------------------------------------------


async def test_bad_frames_get_bad_request_and_connection_stays_open(gateway, codec):
    c = await hello_client(gateway.ws_url, codec)
    # A frame that cannot be decoded at all.
    await c.send_raw("{not json" if codec == "json" else b"\xc1\xc1")
    err = await c.expect("error")
    assert err["code"] == "bad_request" and isinstance(err["message"], str), err
    # A frame that is not a map.
    await c.send([1, 2, 3])
    err = await c.expect("error")
    assert err["code"] == "bad_request", err
    # Unknown type: the id is echoed.
    err = await c.error_for({"type": "bogus", "id": 9}, "bad_request")
    assert err["id"] == 9
    # Missing field.
    await c.error_for({"type": "join", "id": 10}, "bad_request")
    # Bad room names.
    await c.error_for({"type": "join", "room": "bad room!"}, "bad_request")
    await c.error_for({"type": "join", "room": ""}, "bad_request")
    await c.error_for({"type": "join", "room": "x" * 129}, "bad_request")
    # The connection is still usable.
    pong = await c.request({"type": "ping", "id": 99}, "pong")
    assert pong["id"] == 99
    # The longest valid name and every allowed character are accepted.
    await c.join("A" * 128)
    await c.join("az-AZ_09.:@=x")


async def test_json_text_and_msgpack_binary_frames(gateway, codec):
    """Each codec uses its own frame kind (recv() checks text vs binary)."""
    c = await hello_client(gateway.ws_url, codec)
    payload = c.encode({"type": "ping", "id": 3})
    assert isinstance(payload, str if codec == "json" else bytes)
    await c.send_raw(payload)
    assert (await c.expect("pong"))["id"] == 3
    # Sanity of the encoders themselves.
    if codec == "json":
        assert json.loads(payload)["type"] == "ping"
    else:
        assert msgpack.unpackb(payload)["type"] == "ping"


async def test_too_many_bad_frames_in_a_row_close_4400(gateway, codec):
    c = await hello_client(gateway.ws_url, codec)
    # Ten bad frames, then a good one: the run is broken, the connection stays.
    for i in range(10):
        await c.send({"type": "bogus", "id": 100 + i})
    for i in range(10):
        await c.expect("error", id=100 + i)
    await c.ping()
    # Eleven in a row: closed with 4400.
    for i in range(11):
        await c.send({"type": "bogus", "id": 200 + i})
    code, frames = await c.expect_close()
    assert code == 4400, f"expected close 4400, got {code}; frames {frames}"
    errors = [f for f in frames if f["type"] == "error"]
    assert len(errors) >= 10 and all(e["code"] == "bad_request" for e in errors), frames

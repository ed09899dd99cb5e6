"""JWT auth (HS256 shared secret): tokens in hello or on the upgrade request,
anonymous access off, room and publish claims (docs/protocol.md, "Tokens")."""

from __future__ import annotations

import base64
import json
import time

import jwt

from rcclient import JWT_SECRET, member_key, new_room, open_client


def token(sub: str = "alice", *, ttl: int = 300, secret: str = JWT_SECRET, **claims) -> str:
    payload = {"sub": sub, "exp": int(time.time()) + ttl, **claims}
    return jwt.encode(payload, secret, algorithm="HS256")


def unsigned_token(sub: str) -> str:
    def b64(obj) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64({'sub': sub, 'exp': int(time.time()) + 300, 'rooms': ['*']})}."


async def assert_unauthorized(c, hello: dict) -> None:
    await c.send({"type": "hello", "id": 1, **hello})
    code, frames = await c.expect_close()
    errors = [f for f in frames if f["type"] == "error"]
    assert errors and errors[0]["code"] == "unauthorized", f"expected an unauthorized error first: {frames}"
    assert not any(f["type"] == "welcome" for f in frames), frames
    assert code == 4401, f"expected close 4401, got {code}; frames {frames}"


async def test_token_in_hello(jwt_gateway, codec):
    c = await open_client(jwt_gateway.ws_url, codec)
    w = await c.hello(token=token("alice", rooms=["*"]))
    assert w["user"] == "alice" and w["resumed"] is False, w
    room = new_room()
    await c.join(room)
    assert await c.publish(room, "hi") == 1


async def test_token_in_authorization_header(jwt_gateway, codec):
    c = await open_client(
        jwt_gateway.ws_url, codec, headers={"Authorization": f"Bearer {token('bob', rooms=['*'])}"}
    )
    w = await c.hello()
    assert w["user"] == "bob", w


async def test_missing_token_closes_4401(jwt_gateway, codec):
    await assert_unauthorized(await open_client(jwt_gateway.ws_url, codec), {})


async def test_bad_tokens_close_4401(jwt_gateway, codec):
    bad = {
        "wrong-secret": token("eve", secret="not-the-secret-not-the-secret-not-the-secret"),
        "expired": token("eve", ttl=-120),
        "alg-none": unsigned_token("eve"),
        "garbage": "not.a.jwt",
        "no-exp": jwt.encode({"sub": "eve"}, JWT_SECRET, algorithm="HS256"),
        "no-sub": jwt.encode({"exp": int(time.time()) + 300}, JWT_SECRET, algorithm="HS256"),
    }
    for name, tok in bad.items():
        c = await open_client(jwt_gateway.ws_url, codec)
        try:
            await assert_unauthorized(c, {"token": tok})
        except AssertionError as exc:
            raise AssertionError(f"token {name}: {exc}") from None


async def test_rooms_claim_and_forbidden(jwt_gateway, codec):
    c = await open_client(jwt_gateway.ws_url, codec)
    await c.hello(token=token("carol", rooms=["team:*", "lobby"]))
    await c.join("team:red")
    await c.join("lobby")
    err = await c.error_for({"type": "join", "room": "other:room"}, "forbidden")
    assert isinstance(err["message"], str)
    await c.error_for({"type": "join", "room": "lobby2"}, "forbidden")
    # Presence on a room the claim does not allow, not joined: not_joined.
    await c.error_for({"type": "presence", "room": "other:room"}, "not_joined")
    # No rooms claim: no room at all.
    d = await open_client(jwt_gateway.ws_url, codec)
    await d.hello(token=token("dave"))
    await d.error_for({"type": "join", "room": "lobby"}, "forbidden")


async def test_publish_claim_allows_publishing_without_joining(jwt_gateway, codec):
    room = f"news:{new_room('n').split(':')[1]}"
    reader = await open_client(jwt_gateway.ws_url, codec)
    await reader.hello(token=token("reader", rooms=["news:*"]))
    await reader.join(room)
    pub = await open_client(jwt_gateway.ws_url, codec)
    await pub.hello(token=token("backend-bot", publish=["news:*"]))
    off = await pub.publish(room, {"headline": "x"})
    m = await reader.expect("message", offset=off)
    assert m["data"] == {"headline": "x"} and m["from"]["user"] == "backend-bot", m
    await pub.error_for({"type": "publish", "room": "other:room", "data": 1}, "not_joined")


async def test_info_claim_shown_in_presence(jwt_gateway, codec):
    room = new_room()
    info = {"name": "Erin", "color": "blue"}
    a = await open_client(jwt_gateway.ws_url, codec)
    await a.hello(token=token("erin", rooms=["*"], info=info))
    await a.join(room)
    b = await open_client(jwt_gateway.ws_url, codec)
    await b.hello(token=token("frank", rooms=["*"]))
    await b.join(room, presence=True)
    p = await b.request({"type": "presence", "room": room}, "presence")
    by_user = {m["user"]: m for m in p["members"]}
    assert set(by_user) == {"erin", "frank"}, p
    assert by_user["erin"].get("info") == info, p
    assert by_user["frank"].get("info") is None, p
    await a.leave(room)
    ev = await b.expect("presence_leave")
    assert member_key(ev["member"]) == a.me and ev["member"].get("info") == info, ev


async def test_resume_needs_the_same_user(jwt_gateway, codec):
    room = new_room()
    a = await open_client(jwt_gateway.ws_url, codec)
    await a.hello(token=token("gina", rooms=["*"]))
    j = await a.join(room)
    resume = {
        "session": a.session,
        "token": a.welcome["resume_token"],
        "rooms": [{"room": room, "offset": j["offset"], "epoch": j["epoch"]}],
    }
    a.abort()
    other = await open_client(jwt_gateway.ws_url, codec)
    w = await other.hello(token=token("mallory", rooms=["*"]), resume=resume)
    assert w["resumed"] is False and w["session"] != resume["session"] and w["rooms"] == [], w
    assert w["user"] == "mallory"
    same = await open_client(jwt_gateway.ws_url, codec)
    w = await same.hello(token=token("gina", rooms=["*"]), resume=resume)
    assert w["resumed"] is True and w["session"] == resume["session"] and w["user"] == "gina", w
    assert w["rooms"][0]["room"] == room and w["rooms"][0]["recovered"] is True, w

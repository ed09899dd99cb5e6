"""The server HTTP API and the operations endpoints (docs/protocol.md, "HTTP API")."""

from __future__ import annotations

import re

import pytest

from rcclient import ahttp, hello_client, is_int, member_key, new_room, open_client


async def test_healthz_and_readyz(gateway):
    for path in ("/healthz", "/readyz"):
        r = await ahttp(gateway.http_base, "GET", path, key=None)
        assert r.status == 200, (path, r)


async def test_metrics_prometheus_text(gateway):
    c = await hello_client(gateway.ws_url, "json")
    room = new_room()
    await c.join(room)
    await c.publish(room, "for the metrics")
    r = await ahttp(gateway.http_base, "GET", "/metrics", key=None)
    assert r.status == 200, r
    assert r.headers.get("content-type", "").startswith("text/plain"), r.headers
    samples = [l for l in r.text.splitlines() if l and not l.startswith("#")]
    ours = [l for l in samples if l.startswith("roomcast_")]
    assert ours, f"no roomcast_ metric in /metrics:\n{r.text[:1000]}"
    sample = re.compile(
        r"^[a-zA-Z_:][a-zA-Z0-9_:]*(\{.*\})? [-+]?([0-9.]+([eE][-+]?[0-9]+)?|Inf|NaN)( -?[0-9]+)?$"
    )
    for line in ours:
        assert sample.match(line), f"not a Prometheus sample line: {line!r}"
    assert any(l.startswith("# TYPE roomcast_") for l in r.text.splitlines()), "no # TYPE lines"


@pytest.mark.parametrize(
    "method,path,body",
    [
        ("POST", "/api/publish", {"room": "auth-check", "data": 1}),
        ("POST", "/api/send", {"to": {"user": "x"}, "data": 1}),
        ("GET", "/api/presence/auth-check", None),
        ("POST", "/api/disconnect", {"user": "x"}),
        ("GET", "/api/stats", None),
    ],
)
@pytest.mark.parametrize("key", [None, "wrong-key"], ids=["no-key", "wrong-key"])
async def test_api_needs_the_key(gateway, method, path, body, key):
    r = await ahttp(gateway.http_base, method, path, body, key=key)
    assert r.status == 401, r
    err = r.json()
    assert err.get("error") == "unauthorized" and isinstance(err.get("message"), str), err


async def test_api_publish_reaches_members(gateway, codec):
    c = await hello_client(gateway.ws_url, codec)
    room = new_room()
    j = await c.join(room)
    data = {"from": "backend", "n": [1, 2]}
    r = await ahttp(gateway.http_base, "POST", "/api/publish", {"room": room, "data": data})
    assert r.status == 200, r
    body = r.json()
    assert is_int(body.get("offset")) and body["offset"] == j["offset"] + 1, body
    assert body.get("epoch") == j["epoch"], body
    m = await c.expect("message", offset=body["offset"])
    assert m["room"] == room and m["epoch"] == j["epoch"] and m["data"] == data, m
    # Interleaves with WebSocket publishes on one offset sequence.
    off = await c.publish(room, "ws")
    assert off == body["offset"] + 1


async def test_api_publish_bad_requests(gateway):
    r = await ahttp(gateway.http_base, "POST", "/api/publish", {"room": "bad room!", "data": 1})
    assert r.status == 400, r
    assert r.json().get("error") == "bad_request", r
    r = await ahttp(gateway.http_base, "POST", "/api/publish", {"data": 1})
    assert r.status == 400, r
    r = await ahttp(gateway.http_base, "POST", "/api/publish", {"room": "x", "data": "y" * (70 * 1024)})
    assert r.status == 413, r
    assert r.json().get("error") == "too_large", r


async def test_api_presence(gateway, codec):
    a = await hello_client(gateway.ws_url, codec)
    b = await hello_client(gateway.ws_url, codec)
    room = new_room()
    await a.join(room)
    await b.join(room)
    r = await ahttp(gateway.http_base, "GET", f"/api/presence/{room}")
    assert r.status == 200, r
    body = r.json()
    assert body["room"] == room, body
    assert sorted(member_key(m) for m in body["members"]) == sorted([a.me, b.me]), body
    r = await ahttp(gateway.http_base, "GET", f"/api/presence/{new_room()}")
    assert r.status == 200 and r.json()["members"] == [], r


async def test_api_send(gateway, codec):
    a = await hello_client(gateway.ws_url, codec)
    r = await ahttp(gateway.http_base, "POST", "/api/send", {"to": {"user": a.user}, "data": {"k": 1}})
    assert r.status == 200 and r.json() == {"delivered": 1}, r
    d = await a.expect("direct")
    assert d["data"] == {"k": 1}, d
    r = await ahttp(gateway.http_base, "POST", "/api/send", {"to": {"session": a.session}, "data": 2})
    assert r.status == 200 and r.json()["delivered"] == 1, r
    assert (await a.expect("direct"))["data"] == 2
    r = await ahttp(gateway.http_base, "POST", "/api/send", {"to": {"user": "nobody"}, "data": 3})
    assert r.status == 200 and r.json()["delivered"] == 0, r
    r = await ahttp(gateway.http_base, "POST", "/api/send", {"to": {}, "data": 3})
    assert r.status == 400, r


async def test_api_disconnect(gateway, codec):
    a = await hello_client(gateway.ws_url, codec)
    w = a.welcome
    r = await ahttp(gateway.http_base, "POST", "/api/disconnect", {"session": a.session})
    assert r.status == 200 and r.json() == {"disconnected": 1}, r
    code, frames = await a.expect_close()
    assert code == 1000, (code, frames)
    # Its session cannot be resumed.
    b = await open_client(gateway.ws_url, codec)
    w2 = await b.hello(resume={"session": w["session"], "token": w["resume_token"], "rooms": []})
    assert w2["resumed"] is False and w2["session"] != w["session"], w2
    r = await ahttp(gateway.http_base, "POST", "/api/disconnect", {"user": b.user})
    assert r.status == 200 and r.json()["disconnected"] == 1, r
    r = await ahttp(gateway.http_base, "POST", "/api/disconnect", {"user": "nobody"})
    assert r.status == 200 and r.json()["disconnected"] == 0, r


async def test_api_stats(gateway):
    a = await hello_client(gateway.ws_url, "json")
    b = await hello_client(gateway.ws_url, "msgpack")
    room = new_room()
    await a.join(room)
    await b.join(room)
    r = await ahttp(gateway.http_base, "GET", "/api/stats")
    assert r.status == 200, r
    s = r.json()
    assert isinstance(s["node"], str) and s["node"] == a.welcome["node"], s
    assert is_int(s["connections"]) and s["connections"] >= 2, s
    assert is_int(s["rooms"]) and s["rooms"] >= 1, s
    assert isinstance(s["nodes"], list) and s["nodes"], s
    me = [n for n in s["nodes"] if n["node"] == s["node"]]
    assert me and is_int(me[0]["connections"]) and is_int(me[0]["rooms"]), s

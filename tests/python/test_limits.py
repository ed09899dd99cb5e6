"""Limits and their error codes / close codes (docs/protocol.md, "Limits and
close codes"), with the default limits of a `make run` node."""

from __future__ import annotations

from rcclient import hello_client, open_client

MAX_MESSAGE_BYTES = 64 * 1024  # limits.max_message_bytes
MAX_ROOMS = 100  # limits.max_rooms_per_connection
BURST = 200  # limits.message_burst


async def test_welcome_announces_default_ping_interval(gateway, codec):
    c = await hello_client(gateway.ws_url, codec)
    assert c.welcome["ping_interval_ms"] == 25_000, c.welcome


async def test_message_over_limit_closes_1009(gateway, codec):
    for compression in ("deflate", None):  # measured after inflation
        c = await open_client(gateway.ws_url, codec, compression=compression)
        await c.hello()
        await c.send({"type": "publish", "room": "big", "data": "x" * (MAX_MESSAGE_BYTES + 1024)})
        code, frames = await c.expect_close()
        assert code == 1009, f"compression={compression}: expected close 1009, got {code}; {frames}"


async def test_message_just_under_limit_passes(gateway, codec):
    c = await hello_client(gateway.ws_url, codec)
    await c.join("big-ok")
    data = "y" * (MAX_MESSAGE_BYTES - 1024)
    off = await c.publish("big-ok", data)
    assert (await c.expect("message", offset=off))["data"] == data


async def test_too_many_rooms_is_limit_exceeded(gateway, codec):
    c = await hello_client(gateway.ws_url, codec)
    prefix = f"many-{c.session[:8]}-"
    for i in range(MAX_ROOMS):
        await c.send({"type": "join", "id": 1000 + i, "room": f"{prefix}{i}"})
    for i in range(MAX_ROOMS):
        await c.expect("joined", id=1000 + i)
    err = await c.error_for({"type": "join", "room": f"{prefix}extra"}, "limit_exceeded")
    assert isinstance(err["message"], str)
    # Leaving one makes room for another.
    await c.leave(f"{prefix}0")
    await c.join(f"{prefix}extra")


async def test_flooding_is_rate_limited_then_closed_4429(gateway, codec):
    c = await hello_client(gateway.ws_url, codec)
    n = BURST + 100
    for i in range(n):
        await c.send({"type": "ping", "id": i + 1})
    code, frames = await c.expect_close(timeout=10)
    pongs = [f for f in frames if f["type"] == "pong"]
    limited = [f for f in frames if f["type"] == "error" and f["code"] == "rate_limited"]
    assert len(pongs) >= BURST - 10, f"the burst is allowed: only {len(pongs)} pongs"
    assert limited, f"no rate_limited error; got {len(frames)} frames, last {frames[-3:]}"
    assert code == 4429, f"expected close 4429, got {code}"


async def test_no_hello_in_time_closes_4408(own_gateway, codec):
    gw = own_gateway({"ROOMCAST_HEARTBEAT__HELLO_TIMEOUT_MS": "300"})
    c = await open_client(gw.ws_url, codec)
    code, frames = await c.expect_close(timeout=5)
    assert code == 4408, f"expected close 4408, got {code}; {frames}"

"""permessage-deflate (RFC 7692): negotiated when offered, compressed frames
both ways, no context takeover (docs/protocol.md, "Connecting")."""

from __future__ import annotations

import asyncio

from rawws import RawClient
from rcclient import hello_client, new_room, open_client

BIG_TEXT = "roomcast " * 455  # 4095 bytes, very compressible


def extensions_header(client) -> str:
    return client.ws.response.headers.get("Sec-WebSocket-Extensions", "")


async def test_permessage_deflate_negotiated_and_large_message_round_trips(gateway, codec):
    a = await open_client(gateway.ws_url, codec, compression="deflate")
    ext = extensions_header(a)
    assert "permessage-deflate" in ext, f"offered permessage-deflate, response: {ext!r}"
    await a.hello()
    b = await open_client(gateway.ws_url, codec, compression="deflate")
    await b.hello()
    room = new_room()
    await a.join(room)
    await b.join(room)
    data = {"text": BIG_TEXT, "list": list(range(300))}
    off = await a.publish(room, data)
    assert (await a.expect("message", offset=off))["data"] == data
    assert (await b.expect("message", offset=off))["data"] == data
    # Many large messages in a row (exercises per-message compressor state).
    offs = [await a.publish(room, {"i": i, "text": BIG_TEXT}) for i in range(5)]
    for i, off in enumerate(offs):
        m = await b.expect("message", offset=off)
        assert m["data"] == {"i": i, "text": BIG_TEXT}
    # Direct messages too.
    await a.request({"type": "send", "to": {"session": b.session}, "data": BIG_TEXT}, "ack")
    assert (await b.expect("direct"))["data"] == BIG_TEXT


async def test_no_context_takeover_in_either_direction(gateway):
    c = await open_client(gateway.ws_url, "json", compression="deflate")
    ext = extensions_header(c)
    assert "permessage-deflate" in ext, ext
    assert "server_no_context_takeover" in ext, f"docs: no context takeover in either direction; got {ext!r}"
    assert "client_no_context_takeover" in ext, f"docs: no context takeover in either direction; got {ext!r}"


async def test_without_offer_no_extension(gateway, codec):
    a = await open_client(gateway.ws_url, codec, compression=None)
    assert extensions_header(a) == "", extensions_header(a)
    await a.hello()
    room = new_room()
    await a.join(room)
    off = await a.publish(room, BIG_TEXT)
    assert (await a.expect("message", offset=off))["data"] == BIG_TEXT


async def test_server_compresses_large_frames_on_the_wire(gateway):
    """With a raw client: large server frames carry RSV1 and are smaller on the
    wire; compressed client frames are accepted."""
    c = await RawClient.connect(
        "127.0.0.1", gateway.port, extensions="permessage-deflate; client_max_window_bits"
    )
    try:
        assert c.status == 101, (c.status, c.headers)
        assert c.deflate, f"permessage-deflate not negotiated: {c.headers}"
        await c.send_json({"type": "hello", "id": 1}, compress=True)
        w = await c.recv_json()
        assert w["type"] == "welcome" and w["id"] == 1, w
        room = new_room()
        await c.send_json({"type": "join", "id": 2, "room": room}, compress=True)
        j = await c.recv_json()
        assert j["type"] == "joined", j
        big = "abcdefgh" * 2048  # 16 KiB
        for i in range(3):  # several messages: each must inflate on its own
            sent = await c.send_json({"type": "publish", "id": 10 + i, "room": room, "data": big}, compress=True)
            assert sent < 1000  # we did compress
            got = {}
            while len(got) < 2:
                m = await c.recv()
                f = m.json()
                got[f["type"]] = (m, f)
            ack_msg, ack = got["ack"]
            wire, msg = got["message"]
            assert ack["id"] == 10 + i and msg["offset"] == ack["offset"], (ack, msg)
            assert msg["data"] == big
            assert wire.opcode == 0x1, "JSON must use text frames"
            assert wire.compressed, "a 16 KiB message must be sent compressed (RSV1)"
            assert wire.wire_size < len(wire.payload) // 4, (wire.wire_size, len(wire.payload))
    finally:
        await c.close()


async def test_raw_client_without_extension_gets_uncompressed_frames(gateway):
    c = await RawClient.connect("127.0.0.1", gateway.port, extensions=None)
    try:
        assert c.status == 101
        assert not c.deflate and "sec-websocket-extensions" not in c.headers, c.headers
        await c.send_json({"type": "hello"})
        assert (await c.recv_json())["type"] == "welcome"
        room = new_room()
        await c.send_json({"type": "join", "room": room})
        assert (await c.recv_json())["type"] == "joined"
        await c.send_json({"type": "publish", "room": room, "data": "z" * 8192})
        m = await c.recv()
        assert not m.compressed and m.json()["data"] == "z" * 8192
    finally:
        await c.close()


async def test_deflate_and_plain_clients_share_a_room(gateway):
    plain = await open_client(gateway.ws_url, "msgpack", compression=None)
    await plain.hello()
    z = await hello_client(gateway.ws_url, "json")
    room = new_room()
    await plain.join(room)
    await z.join(room)
    off = await z.publish(room, BIG_TEXT)
    assert (await plain.expect("message", offset=off))["data"] == BIG_TEXT
    off = await plain.publish(room, BIG_TEXT * 2)
    assert (await z.expect("message", offset=off))["data"] == BIG_TEXT * 2
    await asyncio.sleep(0)

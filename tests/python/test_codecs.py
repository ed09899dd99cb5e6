"""A message published in one codec reaches members speaking the other with
equal data (PROTOCOL.md, "Transport")."""

from __future__ import annotations

import pytest

from rcclient import hello_client, is_int, new_room

VALUES = [
    {
        "text": "héllo ✓ 世界",
        "n": 42,
        "neg": -7,
        "big": 2**53,
        "u64ish": 2**62,
        "f": 1.5,
        "ok": True,
        "no": False,
        "none": None,
        "list": [1, "two", {"three": 3.25}],
        "nested": {"a": {"b": [], "c": {}}},
    },
    [1, 2.5, "x", None, [True]],
    "just a string",
    123456789,
    -0.125,
    True,
    None,
]


@pytest.mark.parametrize(
    "pub_codec,sub_codec", [("json", "msgpack"), ("msgpack", "json")], ids=["json-to-msgpack", "msgpack-to-json"]
)
async def test_cross_codec_publish_and_send(gateway, pub_codec, sub_codec):
    pub = await hello_client(gateway.ws_url, pub_codec)
    sub = await hello_client(gateway.ws_url, sub_codec)
    room = new_room()
    await pub.join(room)
    await sub.join(room)
    offsets = [await pub.publish(room, v) for v in VALUES]
    for off, value in zip(offsets, VALUES):
        m = await sub.expect("message", offset=off)
        assert "data" in m, f"message without data: {m}"
        assert m["data"] == value, f"{pub_codec}->{sub_codec}: sent {value!r}, got {m['data']!r}"
        assert type(m["data"]) is type(value), (value, m["data"])
    # Integers stay integers and floats stay floats across codecs, and `from`
    # names the publisher.
    pub2 = await hello_client(gateway.ws_url, pub_codec)
    await pub2.join(room)
    off = await pub2.publish(room, VALUES[0])
    m = await sub.expect("message", offset=off)
    assert is_int(m["data"]["n"]) and is_int(m["data"]["big"]) and is_int(m["data"]["u64ish"])
    assert isinstance(m["data"]["f"], float)
    assert m["from"]["session"] == pub2.session

    # Direct messages too.
    await pub.request({"type": "send", "to": {"session": sub.session}, "data": VALUES[0]}, "ack")
    d = await sub.expect("direct")
    assert d["data"] == VALUES[0]
    assert d["from"]["session"] == pub.session

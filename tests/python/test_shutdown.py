"""`reconnect` just before a 1012 close when the node shuts down
(docs/protocol.md, "reconnect")."""

from __future__ import annotations

import signal

from rcclient import hello_client, is_int, new_room


async def test_shutdown_sends_reconnect_then_1012(own_gateway, codec):
    # A short drain window: every client is told to reconnect within 300 ms.
    gw = own_gateway({"ROOMCAST_DRAIN__WINDOW_MS": "300", "ROOMCAST_DRAIN__TIMEOUT_MS": "5000"})
    c = await hello_client(gw.ws_url, codec)
    await c.join(new_room())
    gw.signal(signal.SIGTERM)
    code, frames = await c.expect_close(timeout=10)
    reconnects = [f for f in frames if f["type"] == "reconnect"]
    assert reconnects, f"no reconnect frame before the close; frames {frames}"
    r = reconnects[-1]
    assert r["reason"] == "shutdown", r
    assert is_int(r["after_ms"]) and r["after_ms"] >= 0, r
    assert frames[-1]["type"] == "reconnect", f"reconnect comes just before the close: {frames}"
    assert code == 1012, f"expected close 1012, got {code}"
    assert gw.wait_exit(8) is not None, "the node did not exit after SIGTERM"

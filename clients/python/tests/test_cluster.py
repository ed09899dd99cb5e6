"""The client on a real cluster: redis-server, roomcast-presence and three
gateways sharing a resume secret. The client's node is killed (SIGKILL) or
drained (SIGTERM) while another node publishes a numbered sequence; the
client must resume elsewhere and deliver every number exactly once."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any, List

from conftest import api_publish, new_room, track

from roomcast import Backoff, Client, Message, ReconnectRequested, StateChanged

COUNT = 120


async def publish_sequence(gw: Any, room: str, count: int, every: float) -> List[int]:
    """Publishes {"n": 1..count} through the HTTP API of `gw`; returns the offsets."""
    offsets = []
    for n in range(1, count + 1):
        answer = await asyncio.to_thread(api_publish, gw, room, {"n": n})
        offsets.append(answer["offset"])
        await asyncio.sleep(every)
    return offsets


async def collect(messages: Any, count: int, timeout: float) -> List[Message]:
    got: List[Message] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        got.append(await messages.get(max(0.01, deadline - time.monotonic())))
    return got


def states(events: List[Any]) -> List[StateChanged]:
    return [e for e in events if isinstance(e, StateChanged)]


async def drain_events(events: Any) -> List[Any]:
    out = []
    while events.pending():
        out.append(await events.get(0))
    return out


async def test_a_killed_node_s_client_resumes_on_another_node_with_nothing_lost_or_doubled(
    cluster: Any, codec: str
) -> None:
    c = cluster(3, {"ROOMCAST_HISTORY__SIZE": "1000"})
    first, second, publisher = c.gateways
    client = track(Client([first.ws, second.ws, publisher.ws], codec=codec, backoff=Backoff(base=0.1, cap=1.0)))
    events = client.events()
    session = await asyncio.wait_for(client.connect(), 10)
    assert session.node == "py-node-1"
    room = new_room("kill")
    messages = client.messages(room)
    await client.join(room)

    sequence = asyncio.create_task(publish_sequence(publisher, room, COUNT, every=0.01))
    while client.position(room) is None or client.position(room).offset < COUNT // 3:
        await asyncio.sleep(0.01)
    first.signal(signal.SIGKILL)
    assert first.wait_exit(5) is not None
    killed_at_offset = client.position(room).offset

    got = await collect(messages, COUNT, timeout=25)
    offsets = await sequence
    assert [m.data["n"] for m in got] == list(range(1, COUNT + 1)), "every number once, in order"
    assert [m.offset for m in got] == offsets
    assert len({m.epoch for m in got}) == 1
    await asyncio.sleep(0.3)
    assert messages.pending() == 0, "nothing twice"

    seen = states(await drain_events(events))
    connected = [s for s in seen if s.state == "connected"]
    assert len(connected) == 2, seen
    assert connected[1].resumed is True and connected[1].restored["resumed"] == [room]
    assert connected[1].session is not None and connected[1].session.node != "py-node-1"
    assert connected[1].session.session == session.session
    reconnecting = [s for s in seen if s.state == "reconnecting"]
    assert reconnecting[0].cause is not None and reconnecting[0].cause.kind == "lost"
    # the node died while messages were flowing: some came back as a replay
    # or live on the new node, none twice
    assert killed_at_offset < COUNT


async def test_a_drained_node_s_client_reconnects_after_the_announced_delay_and_loses_nothing(cluster: Any) -> None:
    c = cluster(3, {"ROOMCAST_HISTORY__SIZE": "1000"})
    first, second, publisher = c.gateways
    client = track(Client([first.ws, second.ws, publisher.ws], backoff=Backoff(base=0.1, cap=1.0)))
    events = client.events()
    timeline: List[Any] = []  # (monotonic time, event) as they happen

    async def watch() -> None:
        async for event in events:
            timeline.append((time.monotonic(), event))

    watcher = asyncio.create_task(watch())
    session = await asyncio.wait_for(client.connect(), 10)
    assert session.node == "py-node-1"
    room = new_room("drain")
    messages = client.messages(room)
    await client.join(room)
    assert (await client.publish(room, {"n": 0})).offset == 1

    sequence = asyncio.create_task(publish_sequence(publisher, room, COUNT, every=0.01))
    while client.position(room) is None or client.position(room).offset < COUNT // 3:
        await asyncio.sleep(0.01)
    first.signal(signal.SIGTERM)

    got = await collect(messages, COUNT + 1, timeout=25)
    await sequence
    assert [m.data["n"] for m in got] == list(range(0, COUNT + 1))
    await asyncio.sleep(0.3)
    assert messages.pending() == 0
    assert first.wait_exit(8) == 0, "the drained node exits cleanly"

    events.close()
    await watcher
    seen = [event for _, event in timeline]
    notices = [e for e in seen if isinstance(e, ReconnectRequested)]
    assert len(notices) == 1 and notices[0].reason == "shutdown"
    reconnecting = [s for s in states(seen) if s.state == "reconnecting"]
    assert len(reconnecting) == 1
    cause = reconnecting[0].cause
    assert cause is not None and (cause.kind, cause.code) == ("closed", 1012)
    assert reconnecting[0].delay == notices[0].after, "the wait is the node's after_ms, not a backoff"
    # ... and the next attempt came after that wait (after_ms is 0-250 ms)
    closed_at = next(t for t, e in timeline if e is reconnecting[0])
    retried_at = next(t for t, e in timeline if isinstance(e, StateChanged) and e.state == "connecting" and t > closed_at)
    assert notices[0].after - 0.01 <= retried_at - closed_at <= notices[0].after + 0.5
    connected = [s for s in states(seen) if s.state == "connected"]
    assert connected[-1].resumed is True and connected[-1].session is not None
    assert connected[-1].session.node != "py-node-1"
    # a publish after the move still works, on the same session
    assert connected[-1].session.session == session.session
    ack = await client.publish(room, "after the drain")
    assert ack.offset == COUNT + 2

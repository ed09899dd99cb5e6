"""An idempotent publish retried across a Redis stall.

A TCP proxy (asyncio, in a thread of its own) sits between the gateway and
redis-server. While it holds every byte, a publish times out on the node
(`redis.command_timeout_ms`, set short) and is answered `unavailable`; the
client retries it with the same key. When forwarding resumes, the held
command reaches Redis and is stored, and the retries are answered as
duplicates (or the first retry to arrive is stored and the held one is the
duplicate): the message is stored and delivered exactly once.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, List, Optional

import pytest
from conftest import api_history, new_room, track

import roomcast
from roomcast import Backoff, Client, StateChanged


class StallingProxy:
    """Forwards 127.0.0.1:port to an upstream port; `pause()` holds all traffic."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self.connections = 0
        self._gate: Optional[asyncio.Event] = None
        self._server: Optional[asyncio.AbstractServer] = None
        self._writers: List[asyncio.StreamWriter] = []
        started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self.thread.start()
        if not started.wait(5):
            raise RuntimeError("proxy did not start")

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)

        async def start() -> None:
            self._gate = asyncio.Event()
            self._gate.set()
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]
            started.set()

        self.loop.run_until_complete(start())
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        self._writers += [writer, up_writer]
        await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._gate is not None
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                await self._gate.wait()  # paused: hold the bytes
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def pause(self) -> None:
        assert self._gate is not None
        self.loop.call_soon_threadsafe(self._gate.clear)

    def resume(self) -> None:
        assert self._gate is not None
        self.loop.call_soon_threadsafe(self._gate.set)

    def close(self) -> None:
        async def stop() -> None:
            if self._server is not None:
                self._server.close()
            for w in self._writers:
                w.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.loop.stop()

        asyncio.run_coroutine_threadsafe(stop(), self.loop)
        self.thread.join(5)


async def test_a_publish_retried_after_a_redis_stall_is_stored_and_delivered_once(cluster: Any) -> None:
    from conftest import Redis

    redis = Redis()
    proxy = StallingProxy(redis.port)
    try:
        c = cluster(1, {"ROOMCAST_REDIS__COMMAND_TIMEOUT_MS": "400"}, redis_url=proxy.url, redis=redis)
        (node,) = c.gateways
        publisher = track(
            Client(node.ws, publish_attempts=20, publish_timeout=20, backoff=Backoff(base=0.05, cap=0.5))
        )
        watcher = track(Client(node.ws))
        await asyncio.wait_for(publisher.connect(), 10)
        await asyncio.wait_for(watcher.connect(), 10)
        room = new_room("stall")
        seen = watcher.messages(room)
        await publisher.join(room)
        await watcher.join(room)
        assert (await publisher.publish(room, "before")).offset == 1
        assert (await seen.get(5)).data == "before"

        # A client whose budget is two attempts gives up during the stall.
        impatient = track(Client(node.ws, publish_attempts=2))
        await asyncio.wait_for(impatient.connect(), 10)
        other_room = new_room("give-up")
        await impatient.join(other_room)

        events = publisher.events()
        proxy.pause()
        stalled = asyncio.create_task(publisher.publish(room, {"order": 42}))
        started = time.monotonic()
        with pytest.raises(roomcast.PublishFailed) as gave_up:
            await impatient.publish(other_room, "maybe stored")
        failed = gave_up.value
        assert (failed.code, failed.attempts) == ("unavailable", 2), failed
        assert time.monotonic() - started < 2.5
        await asyncio.sleep(max(0.0, 2.5 - (time.monotonic() - started)))  # several attempts answered `unavailable`
        assert not stalled.done(), "no ack while Redis cannot be reached"
        proxy.resume()
        ack = await asyncio.wait_for(stalled, 20)
        assert ack.attempts >= 2, ack
        assert ack.offset == 2, ack
        # The held first attempt reached Redis first (the node's commands
        # share one connection) and was stored; the retry was a duplicate.
        assert ack.duplicate is True, ack

        got = await seen.get(10)
        assert (got.data, got.offset) == ({"order": 42}, 2)
        assert (await publisher.publish(room, "after")).offset == 3, "nothing else was stored"
        assert (await seen.get(5)).data == "after"
        await asyncio.sleep(0.3)
        assert seen.pending() == 0, "delivered once"

        history = await asyncio.to_thread(api_history, node, room)
        datas = [m["data"] for m in history["messages"]]
        assert datas == ["before", {"order": 42}, "after"], datas
        # What the impatient client gave up on was stored after all (its
        # held first attempt): publishing again with its key is safe.
        again = await impatient.publish(other_room, "maybe stored", key=failed.key)
        assert (again.offset, again.duplicate) == (1, True), again
        # the retries went over the same connection: no reconnect was needed
        while events.pending():
            event = await events.get(0)
            assert not (isinstance(event, StateChanged) and event.state == "reconnecting"), event
    finally:
        proxy.close()


async def test_a_publish_unanswered_when_the_connection_drops_is_retried_after_the_reconnect(cluster: Any) -> None:
    from conftest import Redis

    redis = Redis()
    proxy = StallingProxy(redis.port)
    try:
        c = cluster(1, {"ROOMCAST_REDIS__COMMAND_TIMEOUT_MS": "2000"}, redis_url=proxy.url, redis=redis)
        (node,) = c.gateways
        client = track(Client(node.ws, backoff=Backoff(base=0.05, cap=0.5)))
        await asyncio.wait_for(client.connect(), 10)
        room = new_room("drop")
        messages, events = client.messages(room), client.events()
        await client.join(room)

        proxy.pause()  # the publish reaches the node and waits for Redis
        publishing = asyncio.create_task(client.publish(room, {"order": 7}))
        await asyncio.sleep(0.2)
        assert client.drop_connection_for_test(reconnect_after=0.6)  # its ack will be lost
        await asyncio.sleep(0.1)
        proxy.resume()  # the held publish is stored now, answered to a dead socket
        ack = await asyncio.wait_for(publishing, 15)
        assert (ack.offset, ack.duplicate, ack.attempts) == (1, True, 2), ack

        got = await messages.get(5)
        assert (got.data, got.offset) == ({"order": 7}, 1)
        await asyncio.sleep(0.3)
        assert messages.pending() == 0, "delivered once"
        history = await asyncio.to_thread(api_history, node, room)
        assert [m["data"] for m in history["messages"]] == [{"order": 7}]
        seen = []
        while events.pending():
            seen.append(await events.get(0))
        connected = [e for e in seen if isinstance(e, StateChanged) and e.state == "connected"]
        assert len(connected) == 1 and connected[0].resumed is True
    finally:
        proxy.close()

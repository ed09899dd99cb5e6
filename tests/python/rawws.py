"""A minimal RFC 6455 + RFC 7692 client on raw asyncio streams.

`websockets` hides whether a received frame was compressed; this client shows
the RSV1 bit and the wire size of every message, so the suite can check that
the node really compresses (docs/protocol.md, "Connecting"). JSON codec only.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import struct
import zlib
from dataclasses import dataclass

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TAIL = b"\x00\x00\xff\xff"


@dataclass
class WireMessage:
    opcode: int
    compressed: bool
    wire_size: int  # payload bytes on the wire, all fragments
    payload: bytes  # after inflation

    def json(self) -> dict:
        return json.loads(self.payload)


class RawClient:
    def __init__(self, reader, writer, status: int, headers: dict[str, str]):
        self.reader = reader
        self.writer = writer
        self.status = status
        self.headers = headers
        ext = headers.get("sec-websocket-extensions", "")
        params = [p.strip() for p in ext.split(";")]
        self.deflate = bool(ext) and params[0] == "permessage-deflate"
        self.server_no_context_takeover = "server_no_context_takeover" in params
        self.client_no_context_takeover = "client_no_context_takeover" in params
        self._inflate = zlib.decompressobj(wbits=-15)
        self._deflate = zlib.compressobj(wbits=-15)

    @classmethod
    async def connect(cls, host: str, port: int, *, extensions: str | None, protocol="roomcast.v1.json"):
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            "GET /ws HTTP/1.1",
            f"Host: {host}:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            f"Sec-WebSocket-Protocol: {protocol}",
        ]
        if extensions:
            lines.append(f"Sec-WebSocket-Extensions: {extensions}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split()[1])
        headers: dict[str, str] = {}
        for line in header_lines:
            if ":" in line:
                k, v = line.split(":", 1)
                k = k.strip().lower()
                headers[k] = f"{headers[k]}, {v.strip()}" if k in headers else v.strip()
        if status == 101:
            expect = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
            assert headers.get("sec-websocket-accept") == expect, headers
        return cls(reader, writer, status, headers)

    # -- sending ---------------------------------------------------------------

    async def send_text(self, text: str, compress: bool = False) -> int:
        """Sends one text message; returns its wire payload size."""
        payload = text.encode()
        rsv1 = 0
        if compress:
            assert self.deflate, "permessage-deflate not negotiated"
            data = self._deflate.compress(payload) + self._deflate.flush(zlib.Z_SYNC_FLUSH)
            assert data.endswith(TAIL)
            payload = data[:-4]
            rsv1 = 0x40
            if self.client_no_context_takeover:
                self._deflate = zlib.compressobj(wbits=-15)
        await self._send_frame(0x80 | rsv1 | 0x1, payload)
        return len(payload)

    async def send_json(self, frame: dict, compress: bool = False) -> int:
        return await self.send_text(json.dumps(frame), compress)

    async def _send_frame(self, first: int, payload: bytes) -> None:
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            header = struct.pack("!BB", first, 0x80 | n)
        elif n < 1 << 16:
            header = struct.pack("!BBH", first, 0x80 | 126, n)
        else:
            header = struct.pack("!BBQ", first, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(header + mask + masked)
        await self.writer.drain()

    # -- receiving -------------------------------------------------------------

    async def _read_frame(self) -> tuple[bool, int, int, bytes]:
        b0, b1 = await self.reader.readexactly(2)
        fin, rsv1, opcode = bool(b0 & 0x80), b0 & 0x40, b0 & 0x0F
        assert not b1 & 0x80, "server frames must not be masked"
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
        return fin, rsv1, opcode, await self.reader.readexactly(n)

    async def recv(self, timeout: float = 5.0) -> WireMessage:
        return await asyncio.wait_for(self._recv(), timeout)

    async def _recv(self) -> WireMessage:
        while True:
            fin, rsv1, opcode, payload = await self._read_frame()
            if opcode == 0x9:  # ping
                await self._send_frame(0x8A, payload)
                continue
            if opcode == 0xA:
                continue
            if opcode == 0x8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                raise ConnectionError(f"server closed with {code}")
            first_rsv1, first_opcode = rsv1, opcode
            parts = [payload]
            while not fin:
                fin, rsv1, opcode, payload = await self._read_frame()
                assert opcode == 0x0, f"expected a continuation frame, got opcode {opcode}"
                parts.append(payload)
            data = b"".join(parts)
            wire = len(data)
            if first_rsv1:
                assert self.deflate, "RSV1 set without permessage-deflate"
                data = self._inflate.decompress(data + TAIL)
                if self.server_no_context_takeover:
                    self._inflate = zlib.decompressobj(wbits=-15)
            return WireMessage(first_opcode, bool(first_rsv1), wire, data)

    async def recv_json(self, timeout: float = 5.0) -> dict:
        return (await self.recv(timeout)).json()

    async def close(self) -> None:
        try:
            await self._send_frame(0x88, struct.pack("!H", 1000))
        except Exception:
            pass
        self.writer.close()

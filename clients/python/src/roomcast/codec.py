"""The two encodings of the client protocol and their subprotocol names."""

from __future__ import annotations

import json
from typing import Any, Dict, Union

JSON_SUBPROTOCOL = "roomcast.v1.json"
MSGPACK_SUBPROTOCOL = "roomcast.v1.msgpack"


class Codec:
    """Encodes frames (dicts) to WebSocket messages and back."""

    name: str = ""
    subprotocol: str = ""

    def encode(self, frame: Dict[str, Any]) -> Union[str, bytes]:
        raise NotImplementedError

    def decode(self, message: Union[str, bytes]) -> Any:
        raise NotImplementedError


class JsonCodec(Codec):
    """One JSON object per text frame (``roomcast.v1.json``)."""

    name = "json"
    subprotocol = JSON_SUBPROTOCOL

    def encode(self, frame: Dict[str, Any]) -> str:
        return json.dumps(frame, separators=(",", ":"), ensure_ascii=False, allow_nan=False)

    def decode(self, message: Union[str, bytes]) -> Any:
        return json.loads(message)


class MsgpackCodec(Codec):
    """One MessagePack map per binary frame (``roomcast.v1.msgpack``).

    Needs the ``msgpack`` package (``pip install 'roomcast[msgpack]'``).
    """

    name = "msgpack"
    subprotocol = MSGPACK_SUBPROTOCOL

    def __init__(self) -> None:
        try:
            import msgpack  # type: ignore[import-untyped]
        except ImportError as err:  # pragma: no cover - depends on the install
            raise ImportError(
                "the MessagePack codec needs the msgpack package: pip install 'roomcast[msgpack]'"
            ) from err
        self._msgpack = msgpack

    def encode(self, frame: Dict[str, Any]) -> bytes:
        packed: bytes = self._msgpack.packb(frame, use_bin_type=True)
        return packed

    def decode(self, message: Union[str, bytes]) -> Any:
        if isinstance(message, str):
            message = message.encode()
        return self._msgpack.unpackb(message, raw=False)


def make_codec(codec: Union[str, Codec]) -> Codec:
    """``"json"``, ``"msgpack"`` or a :class:`Codec` instance."""
    if isinstance(codec, Codec):
        return codec
    if codec == "json":
        return JsonCodec()
    if codec == "msgpack":
        return MsgpackCodec()
    raise ValueError(f"unknown codec {codec!r}: use 'json' or 'msgpack'")

"""roomcast: the asyncio Python client of the roomcast real-time gateway.

::

    import asyncio, roomcast

    async def main():
        async with roomcast.Client("ws://127.0.0.1:8080/ws") as client:
            await client.join("lobby")
            messages = client.messages("lobby")
            await client.publish("lobby", {"text": "hi"})
            msg = await messages.get(timeout=5)
            print(msg.offset, msg.data)

    asyncio.run(main())
"""

from .backoff import Backoff
from .client import Client, Subscription, TokenProvider, connect
from .codec import JSON_SUBPROTOCOL, MSGPACK_SUBPROTOCOL, Codec, JsonCodec, MsgpackCodec
from .errors import (
    BadRequest,
    ClientClosed,
    Disconnected,
    EncodeError,
    Forbidden,
    GaveUp,
    InternalError,
    LimitExceeded,
    NotJoined,
    PublishFailed,
    RateLimited,
    RequestTimeout,
    RoomcastError,
    ServerError,
    TooLarge,
    Unauthorized,
    Unavailable,
    UnexpectedReply,
)
from .models import (
    Ack,
    Cause,
    Direct,
    Event,
    Joined,
    Member,
    Message,
    Position,
    PresenceChanged,
    ReconnectRequested,
    RecoveryFailed,
    RejoinFailed,
    RoomLeft,
    ServerErrorEvent,
    SessionInfo,
    StateChanged,
    TokenRefreshed,
    TokenRefreshFailed,
    Unmatched,
)

__version__ = "0.1.0"

__all__ = [
    "Ack",
    "Backoff",
    "BadRequest",
    "Cause",
    "Client",
    "ClientClosed",
    "Codec",
    "Direct",
    "Disconnected",
    "EncodeError",
    "Event",
    "Forbidden",
    "GaveUp",
    "InternalError",
    "JSON_SUBPROTOCOL",
    "Joined",
    "JsonCodec",
    "LimitExceeded",
    "MSGPACK_SUBPROTOCOL",
    "Member",
    "Message",
    "MsgpackCodec",
    "NotJoined",
    "Position",
    "PresenceChanged",
    "PublishFailed",
    "RateLimited",
    "ReconnectRequested",
    "RecoveryFailed",
    "RejoinFailed",
    "RequestTimeout",
    "RoomLeft",
    "RoomcastError",
    "ServerError",
    "ServerErrorEvent",
    "SessionInfo",
    "StateChanged",
    "Subscription",
    "TokenProvider",
    "TokenRefreshFailed",
    "TokenRefreshed",
    "TooLarge",
    "Unauthorized",
    "Unavailable",
    "UnexpectedReply",
    "Unmatched",
    "connect",
]

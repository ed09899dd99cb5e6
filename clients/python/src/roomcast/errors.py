"""Exceptions raised by the roomcast client.

Every exception is a :class:`RoomcastError` with a ``code`` and a ``message``.
An ``error`` frame from the server becomes a :class:`ServerError` (or the
subclass named after its code, such as :class:`NotJoined`); the client's own
failures have codes of their own (``disconnected``, ``closed``, ``timeout``,
``gave_up``, ``encode``, ``unexpected_reply``).
"""

from __future__ import annotations

from typing import Any


class RoomcastError(Exception):
    """Base class: ``code`` is a short machine-readable string, ``message`` the text."""

    code: str = "error"

    def __init__(self, message: str = "", *, code: str | None = None, **details: Any) -> None:
        if code is not None:
            self.code = code
        self.message = message or self.code
        self.details = details
        super().__init__(f"{self.code}: {self.message}")


# ---- errors answered by the server (an ``error`` frame) --------------------


class ServerError(RoomcastError):
    """An ``error`` frame that answered a command; ``code`` is the protocol's."""

    code = "server_error"


class BadRequest(ServerError):
    code = "bad_request"


class Unauthorized(ServerError):
    """The token is missing, invalid or expired.

    Also raised by :meth:`roomcast.Client.connect` (and reported when the
    client stops) when the server refused the token and no token callback
    can provide a better one; ``close_code`` is then 4401 when the server
    closed the connection.
    """

    code = "unauthorized"


class Forbidden(ServerError):
    code = "forbidden"


class NotJoined(ServerError):
    code = "not_joined"


class RateLimited(ServerError):
    code = "rate_limited"


class TooLarge(ServerError):
    code = "too_large"


class LimitExceeded(ServerError):
    code = "limit_exceeded"


class Unavailable(ServerError):
    """The broker could not store or deliver right now (publishes are retried)."""

    code = "unavailable"


class InternalError(ServerError):
    code = "internal"


_BY_CODE: dict[str, type[ServerError]] = {
    cls.code: cls
    for cls in (
        BadRequest,
        Unauthorized,
        Forbidden,
        NotJoined,
        RateLimited,
        TooLarge,
        LimitExceeded,
        Unavailable,
        InternalError,
    )
}


def server_error(code: Any, message: Any, **details: Any) -> ServerError:
    """The exception for an ``error`` frame with ``code`` and ``message``."""
    code = str(code) if code is not None else "server_error"
    cls = _BY_CODE.get(code, ServerError)
    return cls(str(message or code), code=code, **details)


# ---- the client's own failures ----------------------------------------------


class Disconnected(RoomcastError):
    """No connection right now, or it dropped before the reply came."""

    code = "disconnected"


class ClientClosed(RoomcastError):
    """The client was closed (or stopped for good)."""

    code = "closed"


class RequestTimeout(RoomcastError):
    """No reply within the request timeout."""

    code = "timeout"


class GaveUp(RoomcastError):
    """The reconnection policy's attempts ran out."""

    code = "gave_up"


class EncodeError(RoomcastError):
    """The frame could not be encoded by the chosen codec."""

    code = "encode"


class UnexpectedReply(RoomcastError):
    code = "unexpected_reply"


class PublishFailed(RoomcastError):
    """A publish was not acknowledged within its attempts or time budget.

    ``code`` is that of the last failure (``unavailable``, ``disconnected``,
    ``timeout``); ``key`` is the idempotency key used by every attempt and
    ``attempts`` how many were sent. Whether the message was stored is
    unknown: publishing again with the same ``key`` within the server's
    idempotency window is safe.
    """

    code = "unavailable"

    @property
    def key(self) -> str:
        return str(self.details.get("key", ""))

    @property
    def attempts(self) -> int:
        return int(self.details.get("attempts", 0))

"""Reconnection delays: exponential growth, a cap, full jitter."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Optional


@dataclass(frozen=True)
class Backoff:
    """The wait before attempt ``n`` (0-based) is drawn uniformly from
    ``[0, min(cap, base * 2**n)]`` ("full jitter"), which spreads a crowd of
    clients that lost the same node across the whole window. Times in seconds.

    ``max_attempts`` bounds consecutive failed connection attempts (``None``:
    no bound); the client then stops with :class:`roomcast.GaveUp`.
    """

    base: float = 0.25
    cap: float = 15.0
    max_attempts: Optional[int] = None

    def ceiling(self, attempt: int) -> float:
        """The largest wait before attempt ``attempt``."""
        if self.base <= 0:
            return 0.0
        return float(min(self.cap, self.base * 2 ** min(max(attempt, 0), 64)))

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """A random wait in ``[0, ceiling(attempt)]``."""
        return rand() * self.ceiling(attempt)

    def exhausted(self, failures: int) -> bool:
        """True once ``failures`` consecutive failed attempts use the policy up."""
        return self.max_attempts is not None and failures >= max(1, self.max_attempts)

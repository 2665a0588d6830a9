"""The alerts' rate limit per chat: a token bucket."""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    """``capacity`` messages at once, then ``per_second``: a flapping condition cannot flood a chat."""

    def __init__(self, capacity: int, per_second: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(capacity)
        self.per_second = per_second
        self.clock = clock
        self.tokens = float(capacity)
        self.updated = clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.per_second)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

"""An outage of something a loop depends on (the API, the store, the Bot API): logged once when it starts and once
when it ends, with the wait before the next try doubling while it lasts.

A loop that retries every second would otherwise write a line (or a traceback) every second and bury the log; one
that retries at full speed would hammer a service that is already struggling."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class Outage:
    """The state of one dependency as one loop sees it: up, or down since a moment, after ``failures`` tries."""

    def __init__(self, log: logging.Logger, *, first_delay: float, max_delay: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.log = log
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.clock = clock
        self.failures = 0
        self.since: float | None = None

    @property
    def down(self) -> bool:
        return self.failures > 0

    def lasted(self) -> float:
        """Seconds since the outage began; 0 while there is none."""
        return 0.0 if self.since is None else self.clock() - self.since

    def failed(self, message: str, *args: object, level: int = logging.WARNING) -> float:
        """One failed try. ``message`` (with ``args``, as for logging) is logged only when it starts an outage.
        Returns the wait before the next try: ``first_delay``, doubling with each failure up to ``max_delay``."""
        if self.failures == 0:
            self.since = self.clock()
            self.log.log(level, message, *args)
        self.failures += 1
        return min(self.max_delay, self.first_delay * 2 ** (self.failures - 1))

    def recovered(self, message: str = "", *args: object) -> bool:
        """A try succeeded: ``message`` is logged (INFO) when this ends an outage, and the wait starts over.
        Returns whether an outage ended."""
        ended = self.failures > 0
        if ended and message:
            self.log.info(message, *args)
        self.failures, self.since = 0, None
        return ended

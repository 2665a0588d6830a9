"""Wake-ups for long-polling claims: a task may have become claimable.

The store calls back after a commit that made work (in this process), and on PostgreSQL the wake-up listener
(store/notify.py) does for every other replica's; both end in ``WorkSignal.notify`` on the event loop.

One wake-up wakes one waiting claim, not all of them: with hundreds of idle runners, waking all for each new task
would cost a claim transaction per runner per task. The woken claim passes the wake-up on (``notify`` again) when
there may be more for others: it got a task (a batch, or wake-ups that coalesced), or it found nothing but only
looks for some task types. ``hops`` bounds that second kind of passing to the waiters there were, so a task no
waiter here wants does not circle among them; the recheck and the next long poll are the safety net.

On shutdown (SIGTERM) ``close`` answers every waiting claim at once, empty: a runner claims again, from the API
that replaces this one, instead of holding the shutdown up for the rest of its long poll.
"""

from __future__ import annotations

import asyncio
from collections import deque


class WorkSignal:
    """Waiting claims in arrival order; each ``notify`` wakes the one waiting longest.

    A ``notify`` while none waits is kept (one, the largest hops) for the next claim to wait, so a task made while
    every claim was busy looking at the store is looked for again."""

    def __init__(self) -> None:
        self._waiters: deque[asyncio.Future[int]] = deque()
        self._kept: int | None = None
        self.closed = False  # the server is shutting down: no claim waits, and none claims any more

    def close(self) -> None:
        """Shutdown: wake every waiting claim, and make every later ``wait`` return at once."""
        self.closed = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(0)

    def notify(self, hops: int | None = None) -> None:
        """Wake one waiting claim; ``hops``: how many more times it may be passed on (default: one per waiter)."""
        hops = len(self._waiters) if hops is None else hops
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(hops)
                return
        self._kept = hops if self._kept is None else max(self._kept, hops)

    def notify_all(self) -> None:
        """Wake every waiting claim (wake-ups may have been missed, e.g. while the listener reconnected)."""
        waiting = len(self._waiters)
        for _ in range(max(waiting, 1)):
            self.notify(0)

    async def wait(self, timeout: float, gone: asyncio.Future[None]) -> int | None:
        """Wait for a wake-up: its hops, or None when ``timeout`` passed, the client is ``gone`` first or the server
        is shutting down (``closed``)."""
        if self.closed:
            return None
        if self._kept is not None:
            hops, self._kept = self._kept, None
            return hops
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait((waiter, gone), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not waiter.done():
                self._waiters.remove(waiter)
                waiter.cancel()
        return None if waiter.cancelled() else waiter.result()

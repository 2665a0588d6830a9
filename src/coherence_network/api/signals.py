"""Wake-ups for long-polling claims: a task may have become claimable.

The store calls back after a commit that made work (in this process), and on PostgreSQL the wake-up listener
(store/notify.py) does for every other replica's; both end in ``WorkSignal.notify`` on the event loop.
"""

from __future__ import annotations

import asyncio


class WorkSignal:
    """An edge-triggered event: each ``notify`` wakes everyone holding the event handed out before it.

    A waiter takes ``since()`` *before* it looks at the store, so a task made while it looks is not missed."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    def since(self) -> asyncio.Event:
        """An event the next ``notify`` sets."""
        return self._event


async def wait_for_work(woken: asyncio.Event, gone: asyncio.Future[None], timeout: float) -> None:
    """Return when ``woken`` is set, the client is ``gone`` or ``timeout`` seconds pass, whichever is first."""
    waiter = asyncio.ensure_future(woken.wait())
    try:
        await asyncio.wait((waiter, gone), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()

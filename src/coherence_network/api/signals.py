"""Wake-ups for long-polling claims: a task became claimable in this process."""

from __future__ import annotations

import asyncio


class WorkSignal:
    """An edge-triggered event: waiters wake when ``notify`` is called after they started waiting."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except TimeoutError:
            pass

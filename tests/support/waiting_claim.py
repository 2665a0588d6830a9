"""A runner's long-poll claim, waiting in the API on a thread of its own: for the tests of what wakes a waiting claim
(a resume, a finish under a limit, a raised cap) before its recheck would."""

from __future__ import annotations

import threading
import time

from coherence_network.client import ApiClient
from coherence_network.contract import Task, TaskType
from tests.support.api import ServedApi
from tests.support.net import wait_until


class WaitingClaim:
    def __init__(self, client: ApiClient, api: ServedApi, runner_id: str, types: list[TaskType],
                 wait_seconds: float = 30) -> None:
        self.got: list[Task | None] = []
        self.api = api
        self.thread = threading.Thread(target=lambda: self.got.append(
            client.claim(runner_id, types=list(types), wait_seconds=wait_seconds)))
        self.asked = 0.0

    def start(self) -> WaitingClaim:
        """Send the claim; return once it waits in the API (it found nothing to claim)."""
        self.asked = time.monotonic()
        self.thread.start()
        assert self.api.app is not None
        wait_until(lambda: len(self.api.app.state.work._waiters) == 1, 10, "the claim waits")
        return self

    def result(self, timeout: float = 30) -> Task | None:
        """The task the claim got (None: it ran out of time empty-handed)."""
        self.thread.join(timeout)
        assert self.got, "the claim did not answer"
        return self.got[0]

    @property
    def waited(self) -> float:
        return time.monotonic() - self.asked

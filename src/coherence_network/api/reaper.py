"""The lease reaper: the API's background pass that sends expired claims back to pending, holding back whenever the
API could not have heard a runner renew its lease."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from fastapi.concurrency import run_in_threadpool

from coherence_network.outage import Outage

REAPER_MAX_BACKOFF_SECONDS = 30.0  # the longest pause between reaper passes while the store is unavailable
REAPER_LATE_SECONDS = 1.0  # a pass this much later than planned (or an interval, if longer) means nobody answered


class LeaseReaper:
    """The background pass over expired leases (claims no longer wait on it), and when it must hold back.

    An expired lease means a dead runner only if this API could have heard the runner renew it. Whenever it could
    not, the reaper requeues nothing for one lease (``grace``), counted from the moment it can hear again, so
    runners renew first and their results are accepted:

    - at start (a lease may have expired while no API ran);
    - when the store answers again after failing a pass of the reaper or any request (heartbeats got 503 meanwhile;
      runners retry them about once a second);
    - after a pass that came late by the loop's own clock (the process was stopped, SIGSTOP, or starved): the store
      may have been up all along, yet nobody here answered the runners;
    - when the pass itself waited for the store's write lock (SQLite: another process held it): the renewals
      waited behind the same lock, so the pass requeues nothing and holds back instead.

    A store outage is logged once when it starts and once when it ends, and passes back off while it lasts (a
    traceback every pass would bury the log); /api/ready says what is wrong meanwhile."""

    def __init__(self, app: Any, interval: float, grace: float) -> None:
        self.app, self.interval, self.grace = app, interval, grace
        self.hold_until = time.monotonic() + grace
        self.store_suspect = False  # a request found the store unavailable: probe it before trusting leases

    def store_failed(self) -> None:
        """A request got 503 from the store: renewals may have failed too (called by api/errors.py)."""
        self.store_suspect = True

    def _hold(self, why: str, *, quiet_if_holding: bool = False) -> None:
        """Requeue nothing for one lease from now; say so (``quiet_if_holding``: unless already holding, so that
        a store refusing a request now and then, e.g. SQLite busy, does not write a line every pass)."""
        now = time.monotonic()
        if not (quiet_if_holding and now < self.hold_until):
            self.app.state.log.warning("reaper: %s; no expired lease is requeued for %g s, so runners renew first",
                                       why, self.grace)
        self.hold_until = now + self.grace

    async def run(self) -> None:
        store, log = self.app.state.store, self.app.state.log
        outage = Outage(log, first_delay=2 * self.interval, max_delay=REAPER_MAX_BACKOFF_SECONDS)
        delay = self.interval
        while True:
            asleep, asleep_wall = time.monotonic(), time.time()
            await asyncio.sleep(delay)
            # The wall clock too: CLOCK_MONOTONIC stands still while the host is suspended, the leases' clock does not.
            late = max(time.monotonic() - asleep, time.time() - asleep_wall) - delay
            if late > max(self.interval, REAPER_LATE_SECONDS):
                self._hold(f"this pass came {late:.1f} s late (was the API stopped, starved or its host suspended?)")
            try:
                if outage.down or self.store_suspect:
                    self.store_suspect = False  # before the probe: a failure reported during it is not lost
                    await run_in_threadpool(store.ping)
                    if outage.down:
                        self._hold(f"store available again after {outage.lasted():.0f} s")
                    else:
                        self._hold("a request found the store unavailable", quiet_if_holding=True)
                    outage.recovered()
                    delay = self.interval
                if time.monotonic() < self.hold_until:
                    continue
                result = await run_in_threadpool(lambda: store.reap(max_lock_wait=max(self.interval,
                                                                                       REAPER_LATE_SECONDS)))
            except Exception as exc:  # a store outage must not kill the loop
                cause = (str(exc).strip().splitlines() or [""])[0][:300]
                delay = outage.failed("store unavailable to the lease reaper: %s: %s (retrying with backoff; "
                                      "GET /api/ready tells more)", type(exc).__name__, cause, level=logging.ERROR)
                continue
            if result.waited is not None:
                self._hold(f"this pass waited {result.waited:.1f} s for the store's write lock, as renewals did")
            if result.reclaimed or result.failed:
                self.app.state.metrics.tasks_reclaimed.inc(result.reclaimed)
                self.app.state.metrics.tasks_lease_failed.inc(result.failed)
                log.warning("reaper: %d expired leases back to pending, %d failed", result.reclaimed, result.failed)
            if result.cancelled:
                log.warning("reaper: %d expired leases of tasks whose cancel was requested: cancelled",
                            result.cancelled)


async def reaper_loop(app: Any, interval: float, grace: float) -> None:
    """Run the lease reaper of ``app`` (see LeaseReaper); requests that find the store unavailable tell it."""
    app.state.reaper = LeaseReaper(app, interval, grace)
    await app.state.reaper.run()

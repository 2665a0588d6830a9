#!/usr/bin/env python3
"""An API restart under the supervisor while runners long-poll (issue 18, item 5).

`coherence supervise --components api` in a throwaway COHERENCE_HOME (SQLite); 8 clients behave like idle runners
(a long-poll claim of 30 s, again at once after each answer, again after 0.1 s after an error), and a prober opens a
new connection for GET /api/health every 20 ms. Then SIGTERM to the API, ``--restarts`` times. Per restart:
- claims answered: from the signal until every waiting claim has its answer (the old API answers them, empty);
- old API gone: from the signal until the old process has exited;
- answers again: from the signal until the first answer from the new API (a probe that completed after the old
  process was gone);
- refused: connections refused (and other connection errors) among the probes and claims meanwhile;
- longest wait: the longest time one probe waited for its answer (connections wait in the kernel's backlog).

Run by hand: `.venv/bin/python bench/api_restart.py` (see bench/README.md, "API restart").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # for tests.support

from tests.support.net import wait_until
from tests.support.pipeline import PipelineProcess, alive

RUNNERS = 8
WAIT_SECONDS = 30
PROBE_EVERY = 0.02


class Tally:
    """What the clients saw; ``errors`` by kind."""

    def __init__(self) -> None:
        self.errors: dict[str, int] = {}
        self.claims_answered: list[float] = []  # when each claim got its answer
        self.probes: list[tuple[float, float]] = []  # (sent, answered) of each probe that got an answer

    def error(self, exc: Exception) -> None:
        kind = "refused" if isinstance(exc, httpx.ConnectError) else type(exc).__name__
        self.errors[kind] = self.errors.get(kind, 0) + 1


async def runner(url: str, number: int, tally: Tally, until: float) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=WAIT_SECONDS + 30) as client:
        while time.monotonic() < until:
            try:
                await client.post("/api/agent/tasks/claim", json={"runner_id": f"bench-{number}",
                                                                 "wait_seconds": WAIT_SECONDS})
                tally.claims_answered.append(time.monotonic())
            except httpx.HTTPError as exc:
                tally.error(exc)
                await asyncio.sleep(0.1)


async def prober(url: str, tally: Tally, until: float) -> None:
    while time.monotonic() < until:
        sent = time.monotonic()
        try:
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:  # a new connection each time
                (await client.get("/api/health")).raise_for_status()
            tally.probes.append((sent, time.monotonic()))
        except httpx.HTTPError as exc:
            tally.error(exc)
        await asyncio.sleep(PROBE_EVERY)


async def one_restart(pipeline: PipelineProcess, settle: float) -> dict[str, float | int | dict[str, int]]:
    tally = Tally()
    until = time.monotonic() + 3600
    clients = [asyncio.create_task(runner(pipeline.url, n, tally, until)) for n in range(RUNNERS)]
    probing = asyncio.create_task(prober(pipeline.url, tally, until))
    await asyncio.sleep(settle)  # every runner is waiting in its long poll now
    old = pipeline.pid("api")
    assert old is not None
    tally.claims_answered.clear()
    signalled = time.monotonic()
    os.kill(old, signal.SIGTERM)
    while alive(old):
        await asyncio.sleep(0.005)
    gone = time.monotonic()
    while not any(answered > gone for _, answered in tally.probes):
        await asyncio.sleep(0.005)
    again = min(answered for _, answered in tally.probes if answered > gone)
    await asyncio.sleep(settle)
    for task in [*clients, probing]:
        task.cancel()
    await asyncio.gather(*clients, probing, return_exceptions=True)
    first_answers = sorted(tally.claims_answered)[:RUNNERS]
    return {
        "claims_answered_s": round(max(first_answers) - signalled, 3) if len(first_answers) == RUNNERS else -1,
        "old_api_gone_s": round(gone - signalled, 3),
        "answers_again_s": round(again - signalled, 3),
        "longest_wait_s": round(max(answered - sent for sent, answered in tally.probes if answered > signalled), 3),
        "errors": tally.errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--restarts", type=int, default=5)
    parser.add_argument("--settle", type=float, default=2.0, help="seconds of calm before and after each restart")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        pipeline = PipelineProcess(Path(tmp) / "home", "--components", "api",
                                   env={"COHERENCE_LOG_LEVEL": "WARNING"}).start()
        try:
            pipeline.wait_started("api")
            wait_until(pipeline.api_up, 60, "the API to answer")
            results = []
            for number in range(args.restarts):
                result = asyncio.run(one_restart(pipeline, args.settle))
                print(json.dumps({"restart": number + 1, **result}), flush=True)
                results.append(result)
        finally:
            pipeline.stop()
    summary: dict[str, object] = {"restarts": len(results), "runners": RUNNERS}
    for key in ("claims_answered_s", "old_api_gone_s", "answers_again_s", "longest_wait_s"):
        values = [float(r[key]) for r in results]  # type: ignore[arg-type]
        summary[key] = {"p50": round(statistics.median(values), 3), "max": round(max(values), 3)}
    summary["refused"] = sum(r["errors"].get("refused", 0) for r in results)  # type: ignore[union-attr]
    summary["other_errors"] = sum(n for r in results for k, n in r["errors"].items()  # type: ignore[union-attr]
                                  if k != "refused")
    print(json.dumps({"summary": summary}))


if __name__ == "__main__":
    main()

"""SIGTERM to `coherence api` with runners' long-poll claims waiting: each is answered at once (empty, the runner
claims again) and the API exits within seconds, not after the long polls run out (issue 18, item 5)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from tests.support.api import ApiProcess


async def _claims_then_sigterm(api: ApiProcess, runners: int) -> tuple[list[httpx.Response], float, float]:
    async with httpx.AsyncClient(base_url=api.url, timeout=60) as client:
        polls = [asyncio.create_task(client.post("/api/agent/tasks/claims",
                                                 json={"runner_id": f"r{n}", "wait_seconds": 30, "max_tasks": 2}))
                 for n in range(runners)]
        await asyncio.sleep(1.0)
        assert api.proc is not None and not any(p.done() for p in polls)
        signalled = time.monotonic()
        api.proc.terminate()
        answers = await asyncio.gather(*polls)
        answered = time.monotonic() - signalled
        while api.proc.poll() is None:
            await asyncio.sleep(0.01)
        return answers, answered, time.monotonic() - signalled


def test_sigterm_answers_waiting_claims_at_once_and_exits(tmp_path: Path) -> None:
    api = ApiProcess(tmp_path / "home").start()
    try:
        answers, answered, exited = asyncio.run(_claims_then_sigterm(api, 8))
    finally:
        api.kill()
    assert [(a.status_code, a.json()) for a in answers] == [(200, {"tasks": []})] * 8
    assert all(a.headers["connection"] == "close" for a in answers)  # the next claim goes to the next API
    assert answered < 5 and exited < 5, (answered, exited)
    assert api.proc is not None and api.proc.returncode == 0

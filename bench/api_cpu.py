#!/usr/bin/env python3
"""The API's CPU per request on the runners' paths with the HTTP server taken out: the application (middleware,
routes, store) called directly as ASGI, in this process, timed with process_time.

Without uvicorn, a client and the scheduler of a shared machine in the figure, a change to the request path shows
in a few per cent, where bench/throughput.py's wall figures spread by 20-30 % between runs of the same code. Compare
two commits by running each one's copy in turn (alternated, several times), e.g.
`PYTHONPATH=/path/to/other/src .venv/bin/python bench/api_cpu.py`.

Per path and store it prints the lowest of ``--rounds`` rounds of ``--n`` requests (the least disturbed one) in µs
of CPU per request: create, create with an Idempotency-Key (the project's client always sends one), claim, plain
finish, finish with claim_next (the runner's cycle). ``--actor`` sends X-Coherence-Actor (``component:pm`` is the
pipeline's own, which writes no audit row).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # for tests.support

from tests.support.postgres import PostgresServer  # noqa: E402

Headers = list[tuple[bytes, bytes]]


class InProcessApi:
    """The app as create_app builds it for the current COHERENCE_HOME and DATABASE_URL, called without a server."""

    def __init__(self, actor: str | None) -> None:
        from coherence_network.api.app import create_app  # after the environment names the store
        from coherence_network.settings import Settings

        self.app = create_app(Settings())
        self.headers: Headers = [(b"host", b"127.0.0.1:8000"), (b"content-type", b"application/json")]
        if actor:
            self.headers.append((b"x-coherence-actor", actor.encode()))

    async def post(self, path: str, body: dict[str, Any], extra: Headers | None = None) -> Any:
        raw = json.dumps(body).encode()
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
                 "headers": [*self.headers, (b"content-length", str(len(raw)).encode()), *(extra or [])],
                 "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000), "state": {}}
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": raw, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await self.app(scope, receive, send)
        answer = b"".join(m.get("body", b"") for m in sent[1:])
        if sent[0]["status"] >= 300:
            raise RuntimeError(f"{path}: {sent[0]['status']} {answer[:300]!r}")
        return json.loads(answer) if answer else None


async def cpu_per_call(calls: list[Callable[[], Awaitable[Any]]]) -> tuple[float, list[Any]]:
    """µs of this process's CPU per call, and what the calls answered."""
    started = time.process_time()
    answers = [await call() for call in calls]
    return (time.process_time() - started) / len(calls) * 1e6, answers


async def measure(n: int, rounds: int, actor: str | None) -> dict[str, float]:
    api = InProcessApi(actor)
    best: dict[str, float] = {}

    def keep(path: str, micros: float) -> None:
        best[path] = min(best.get(path, micros), micros)

    async with api.app.router.lifespan_context(api.app):
        for r in range(rounds):
            def create(i: int, key: bool) -> Callable[[], Awaitable[Any]]:
                extra = [(b"idempotency-key", f"{r}-{i}".encode())] if key else []
                return lambda: api.post("/api/agent/tasks", {"task_type": "impl", "direction": f"{r}-{i}-{key}"}, extra)

            for key, name in ((False, "create"), (True, "create keyed")):
                keep(name, (await cpu_per_call([create(i, key) for i in range(n)]))[0])
            claim = {"runner_id": "bench"}
            micros, claimed = await cpu_per_call([lambda: api.post("/api/agent/tasks/claim", claim)] * n)
            keep("claim", micros)
            half = n // 2 or 1

            def finish(task: dict[str, Any], then: dict[str, Any] | None) -> Callable[[], Awaitable[Any]]:
                body = {"claim_token": task["claim_token"], "status": "completed",
                        **({"claim_next": then} if then else {})}
                return lambda: api.post(f"/api/agent/tasks/{task['id']}/finish", body)

            keep("finish", (await cpu_per_call([finish(t, None) for t in claimed[:half]]))[0])
            if claimed[half:]:  # each claims one of the n tasks the creates left pending
                keep("finish+claim_next", (await cpu_per_call([finish(t, claim) for t in claimed[half:]]))[0])
    return {path: round(micros) for path, micros in best.items()}


def run(store: str, url: str, home: Path, args: argparse.Namespace) -> None:
    os.environ.update(COHERENCE_HOME=str(home), DATABASE_URL=url or f"sqlite:///{home / 'coherence.db'}")
    figures = uvloop.run(measure(args.n, args.rounds, args.actor))
    print(json.dumps({"store": store, "n": args.n, "rounds": args.rounds, "actor": args.actor,
                      "cpu_us_per_request": figures}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000,
                        help="Creates of each kind and claims per round (half the claimed tasks are finished plainly, "
                        "half with claim_next)")
    parser.add_argument("--rounds", type=int, default=4, help="Rounds; the lowest is kept")
    parser.add_argument("--store", choices=["sqlite", "postgresql"], default="sqlite",
                        help="postgresql: a throwaway server from the installed binaries")
    parser.add_argument("--actor", default=None, help="X-Coherence-Actor to send (default: none, as a script's)")
    args = parser.parse_args()
    if args.n < 1 or args.rounds < 1:
        parser.error("--n and --rounds must be at least 1")
    with tempfile.TemporaryDirectory(prefix="bench-api-cpu-") as tmp:
        home = Path(tmp) / "home"
        if args.store == "sqlite":
            run("sqlite", "", home, args)
            return
        server = PostgresServer(Path(tmp) / "postgres").start()
        try:
            run("postgresql", server.new_database(), home, args)
        finally:
            server.stop()


if __name__ == "__main__":
    main()

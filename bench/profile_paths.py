#!/usr/bin/env python3
"""Where a request's time goes (issue 23): the API's CPU and the client's wall time per request on each hot path.

Paths, each N requests from one keep-alive client, on a `coherence api` over SQLite and one over a throwaway
PostgreSQL: a create without an idempotency key, a create with one (the project's own client always sends one), a
claim (no wait), a plain finish, and a finish with ``claim_next`` (the runner's cycle: one call finishes a task and
claims the next). The API's CPU per request is its process's user+system time (``/proc/PID/stat``) over the
requests of a path.

With ``--py-spy DIR`` each path is also sampled by py-spy (``.venv/bin/pip install py-spy``; looked up beside the
Python running the bench) into DIR as collapsed stacks (``STORE-PATH.folded``, for any flame-graph tool), and each
package's share of the API's Python CPU is printed: where the API's time goes. Run by hand:
``.venv/bin/python bench/profile_paths.py`` (bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from coherence_network.contract import TaskStatus, TaskType  # noqa: E402
from coherence_network.settings import Settings  # noqa: E402
from tests.support.api import ApiProcess  # noqa: E402
from tests.support.postgres import PostgresServer  # noqa: E402

TASK = {"direction": "bench", "task_type": TaskType.RUN, "command": "true"}
CLAIM = {"runner_id": "bench", "wait_seconds": 0}
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """The process's user + system CPU time so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


@contextmanager
def sampled(pid: int, folder: Path | None, name: str) -> Iterator[None]:
    """py-spy samples the API while the block runs, when a folder is given."""
    if folder is None:
        yield
        return
    spy = subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(pid), "--rate", "500",
                            "--gil", "--format", "raw", "--output", str(folder / f"{name}.folded"), "--nonblocking"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # attached before the first request
    try:
        yield
    finally:
        spy.send_signal(2)
        spy.wait(30)
        print(json.dumps({"profile": name, "own_share_by_package": by_package(folder / f"{name}.folded")}), flush=True)


def by_package(folded: Path) -> dict[str, float]:
    """Each package's share of the samples, by the frame running when sampled (its own time, not its callees').
    py-spy samples only the thread holding the GIL (``--gil``), so a share is of the API's Python CPU; C code
    (SQLite, the JSON encoder, httptools) counts toward the Python function that called it."""
    own: dict[str, int] = {}
    total = 0
    # a frame's name may span lines (code compiled from a string names its source): a stack ends at " COUNT\n"
    for stack, samples in re.findall(r"(.*?) (\d+)\n", folded.read_text(), re.DOTALL):
        total += int(samples)
        place = re.search(r"\(([^():]*?)(?:\.py)?:\d+\)$", stack.rsplit(";", 1)[-1])
        package = place[1].split("/")[0] if place else "?"
        own[package] = own.get(package, 0) + int(samples)
    return {package: round(hits / max(total, 1), 3) for package, hits in sorted(own.items(), key=lambda i: -i[1])}


class Paths:
    """The hot paths on one API, each a function doing one request (or, for finishes, the claim that feeds it
    outside the timed part)."""

    def __init__(self, url: str, pid: int) -> None:
        self.http = httpx.Client(base_url=url, timeout=30)
        self.pid = pid
        self.key = 0

    def create(self) -> Callable[[], None]:
        return lambda: self._ok(self.http.post("/api/agent/tasks", json=TASK))

    def create_keyed(self) -> Callable[[], None]:
        def one() -> None:
            self.key += 1
            self._ok(self.http.post("/api/agent/tasks", json=TASK, headers={"Idempotency-Key": f"k{self.key}"}))
        return one

    def claim(self) -> dict[str, object]:
        answer = self.http.post("/api/agent/tasks/claim", json=CLAIM)
        self._ok(answer)
        return dict(answer.json())

    def finish_body(self, task: dict[str, object]) -> dict[str, object]:
        return {"claim_token": task["claim_token"], "status": TaskStatus.COMPLETED, "output": "ok", "exit_code": 0}

    def _ok(self, answer: httpx.Response) -> None:
        if answer.status_code not in (200, 201):
            raise RuntimeError(f"{answer.request.url}: {answer.status_code} {answer.text[:200]}")

    def measure(self, n: int, name: str, spy: Path | None, store: str) -> dict[str, object]:
        """Run path ``name`` n times; µs of API CPU and the client's wall p50/p95 per request."""
        walls: list[float] = []
        claimed: list[dict[str, object]] = []
        if name in ("claim", "finish", "finish+claim_next"):
            for _ in range(n + 1):
                self._ok(self.http.post("/api/agent/tasks", json=TASK))
        if name in ("finish",):
            claimed = [self.claim() for _ in range(n)]
        nxt = self.claim() if name == "finish+claim_next" else None
        step: Callable[[], None]
        if name == "create":
            step = self.create()
        elif name == "create keyed":
            step = self.create_keyed()
        elif name == "claim":
            def step() -> None:
                self.claim()
        elif name == "finish":
            def step() -> None:
                task = claimed.pop()
                self._ok(self.http.post(f"/api/agent/tasks/{task['id']}/finish", json=self.finish_body(task)))
        else:
            def step() -> None:
                nonlocal nxt
                assert nxt is not None
                answer = self.http.post(f"/api/agent/tasks/{nxt['id']}/finish", json={
                    **self.finish_body(nxt), "claim_next": CLAIM})
                self._ok(answer)
                nxt = answer.json()["next"]
        with sampled(self.pid, spy, f"{store}-{name.replace(' ', '-').replace('+', '-')}"):
            cpu = cpu_seconds(self.pid)
            for _ in range(n):
                start = time.perf_counter()
                step()
                walls.append(time.perf_counter() - start)
            cpu = cpu_seconds(self.pid) - cpu
        walls.sort()
        return {"store": store, "path": name, "n": n, "api_cpu_us": round(cpu / n * 1e6),
                "wall_p50_us": round(statistics.median(walls) * 1e6),
                "wall_p95_us": round(walls[int(len(walls) * 0.95)] * 1e6), "per_s": round(n / sum(walls))}


PATHS = ("create", "create keyed", "claim", "finish", "finish+claim_next")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="Requests per path and store")
    parser.add_argument("--stores", default="sqlite,postgresql", help="Comma-separated: sqlite, postgresql")
    parser.add_argument("--paths", default=",".join(PATHS), help=f"Comma-separated, of: {', '.join(PATHS)}")
    parser.add_argument("--py-spy", type=Path, default=None, metavar="DIR", help="Flame graphs of each path here")
    args = parser.parse_args()
    print(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count(),
                      "load_average": os.getloadavg(), "n": args.n}), flush=True)
    if args.py_spy:
        args.py_spy.mkdir(parents=True, exist_ok=True)
    env = {"COHERENCE_LOG_LEVEL": "WARNING",
           "COHERENCE_REAP_INTERVAL": str(Settings.model_fields["coherence_reap_interval"].default)}
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp:
        work = Path(tmp)
        server = PostgresServer(work / "pg").start() if "postgresql" in args.stores else None
        try:
            for store in args.stores.split(","):
                extra = {"DATABASE_URL": server.new_database()} if store == "postgresql" and server else {}
                api = ApiProcess(work / f"home-{store}", env={**env, **extra}).start()
                try:
                    assert api.proc is not None
                    paths = Paths(api.url, api.proc.pid)
                    paths.measure(200, "create", None, store)  # warm: caches, pool, first compiles
                    for name in args.paths.split(","):
                        print(json.dumps(paths.measure(args.n, name, args.py_spy, store)), flush=True)
                finally:
                    api.stop()
        finally:
            if server is not None:
                server.stop()
    print(json.dumps({"load_average": os.getloadavg()}), flush=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Floor and peer benchmark (issue 14): ours against a bare FastAPI + SQLite app and against procrastinate, one run.

One client (httpx, keep-alive, asyncio) measures the floor app (bench/floor_app.py), a `coherence api` on SQLite
and a `coherence api` on a throwaway PostgreSQL: creates/s one at a time and batched, claim+finish cycles/s over N
tasks with K = 1 and 4 concurrent clients (and finish-with-claim_next when the server has it), dispatch p50 and, on
PostgreSQL, transactions/s per waiting claim. procrastinate runs on the same PostgreSQL server, same job count.
All four run at once and are measured row by row, each row on every subject in turn, so the shared machine's
changing load hits a row's columns alike. Run by hand: `.venv/bin/python bench/throughput.py` (bench/README.md);
needs the bench extra (`pip install -e '.[bench]'`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from multiprocessing.synchronize import Event
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from coherence_network.contract import TaskStatus, TaskType  # noqa: E402
from coherence_network.settings import Settings  # noqa: E402
from tests.support.api import ApiProcess  # noqa: E402
from tests.support.net import free_port, wait_until  # noqa: E402
from tests.support.postgres import PostgresServer  # noqa: E402

TASK = {"direction": "bench", "task_type": TaskType.RUN, "command": "true"}
BATCH_SIZE = 500


ROWS = [
    ("create one at a time /s", "higher"),
    ("claim+finish K=1 /s", "higher"),
    ("create batched /s", "higher"),
    ("claim+finish K=4 /s", "higher"),
    ("finish+claim_next K=1 /s", "higher"),
    ("finish+claim_next K=4 /s", "higher"),
    ("dispatch p50 ms", "lower"),
    ("idle transactions/s per waiting worker", "lower"),
]
Figure = float | str | None  # None: not measured for this subject; "n/a": the server lacks the call


class PgStats:
    """Transactions of one database, from pg_stat_database, read through the server's maintenance database."""

    def __init__(self, server: PostgresServer, url: str) -> None:
        import psycopg

        self.conn = psycopg.connect(server.url().replace("+psycopg", ""), autocommit=True)
        self.database = url.rsplit("/", 1)[1]

    def transactions(self) -> int:
        self.conn.execute("SELECT pg_stat_clear_snapshot()")
        row = self.conn.execute("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s",
                                (self.database,)).fetchone()
        return int(row[0]) if row else 0

    async def rate(self, seconds: float) -> float:
        """Transactions per second over ``seconds`` (backends flush their counts about once a second when busy and
        within 10 s when idle: use long windows)."""
        before = self.transactions()
        await asyncio.sleep(seconds)
        return (self.transactions() - before) / seconds


Stopper = Callable[[], Awaitable[None]]


async def idle_cost(stats: PgStats, start_waiters: Callable[[], Awaitable[Stopper]], waiters: int,
                    seconds: float) -> float:
    """Per waiting worker: (rate with the waiters - rate without) / waiters."""
    baseline = await stats.rate(seconds)
    stop = await start_waiters()
    await asyncio.sleep(2)  # past start-up (connections, first fetch)
    loaded = await stats.rate(seconds)
    await stop()
    return max(loaded - baseline, 0.0) / waiters


class Subject:
    """One column of the table. Every subject takes the same steps in the same order, row by row, interleaved with
    the others (so a change in the machine's load hits all columns of a row alike)."""

    # what the finish+claim_next rows show without the call ("n/a"; None: not a thing for the subject), else False
    claim_next_absent: Figure | bool = None

    def __init__(self, name: str, stats: PgStats | None) -> None:
        self.name = name
        self.stats = stats
        self.figures: dict[str, Figure] = {}

    async def create_one(self, n: int) -> float:
        raise NotImplementedError

    async def create_batch(self, n: int) -> Figure:
        raise NotImplementedError

    async def refill(self, n: int) -> None:
        """n more pending tasks (jobs), untimed: the fastest way the subject has."""
        raise NotImplementedError

    async def process(self, k: int, n: int, claim_next: bool) -> Figure:
        raise NotImplementedError

    async def dispatch(self, samples: int) -> float:
        raise NotImplementedError

    async def start_waiters(self, waiters: int) -> Stopper:
        raise NotImplementedError

    async def measure(self, row: str, args: argparse.Namespace) -> Figure:
        n = args.n
        if row == "create one at a time /s":
            return await self.create_one(n)
        if row == "create batched /s":
            rate = await self.create_batch(n)
            if not isinstance(rate, float):
                await self.refill(n)
            return rate
        if row.startswith(("claim+finish", "finish+claim_next")):
            k, claim_next = int(row.split("K=")[1].split()[0]), row.startswith("finish")
            if claim_next and self.claim_next_absent is not False:
                return self.claim_next_absent
            if claim_next:
                await self.refill(n)
            return await self.process(k, n, claim_next)
        if row == "dispatch p50 ms":
            return await self.dispatch(args.samples)
        if self.stats is None:
            return None
        return await idle_cost(self.stats, lambda: self.start_waiters(args.waiters), args.waiters,
                               args.idle_seconds)

    def record(self, row: str, value: Figure) -> None:
        self.figures[row] = value
        print(json.dumps({"subject": self.name, "figure": row, "value": value}), flush=True)


# --- HTTP subjects: the floor app and ours ------------------------------------------------------------------------
def _finish_body(task: dict[str, object]) -> dict[str, object]:
    return {"claim_token": task["claim_token"], "status": TaskStatus.COMPLETED, "exit_code": 0}


class HttpSubject(Subject):
    """A server with our routes; what it has beyond create, claim and finish is read from its OpenAPI document."""

    def __init__(self, name: str, url: str, stats: PgStats | None = None) -> None:
        super().__init__(name, stats)
        self.url = url
        schema = httpx.get(f"{url}/openapi.json", timeout=10).json()
        self.has_batch = "/api/agent/tasks/batch" in schema.get("paths", {})
        # Served when the finish can answer {finished, next}; the floor takes our request model (claim_next
        # included) but answers a Task only.
        finish = schema.get("paths", {}).get("/api/agent/tasks/{task_id}/finish", {}).get("post", {})
        self.claim_next_absent = False if "FinishAndClaim" in json.dumps(finish.get("responses", {})) else "n/a"
        self.http = httpx.AsyncClient(base_url=url, timeout=60)

    async def create_one(self, n: int) -> float:
        started = time.perf_counter()
        for _ in range(n):
            (await self.http.post("/api/agent/tasks", json=TASK)).raise_for_status()
        return n / (time.perf_counter() - started)

    async def create_batch(self, n: int) -> Figure:
        if not self.has_batch:
            return "n/a"
        started = time.perf_counter()
        for offset in range(0, n, BATCH_SIZE):
            batch = [TASK] * min(BATCH_SIZE, n - offset)
            (await self.http.post("/api/agent/tasks/batch", json={"tasks": batch})).raise_for_status()
        return n / (time.perf_counter() - started)

    async def refill(self, n: int) -> None:
        if self.has_batch:
            await self.create_batch(n)
        else:
            await self.create_one(n)

    async def _client(self, name: str, claim_next: bool) -> int:
        """Claim and finish until nothing is claimable; returns the cycles done."""
        done = 0
        async with httpx.AsyncClient(base_url=self.url, timeout=60) as http:
            claim = {"runner_id": name}
            answer = await http.post("/api/agent/tasks/claim", json=claim)
            task = answer.json() if answer.status_code == 200 else None
            while task is not None:
                body = _finish_body(task) | ({"claim_next": claim} if claim_next else {})
                finished = await http.post(f"/api/agent/tasks/{task['id']}/finish", json=body)
                finished.raise_for_status()
                done += 1
                if claim_next:
                    task = finished.json()["next"]
                else:
                    answer = await http.post("/api/agent/tasks/claim", json=claim)
                    task = answer.json() if answer.status_code == 200 else None
        return done

    async def process(self, k: int, n: int, claim_next: bool) -> Figure:
        started = time.perf_counter()
        done = await asyncio.gather(*(self._client(f"bench-{i}", claim_next) for i in range(k)))
        elapsed = time.perf_counter() - started
        if sum(done) != n:
            raise RuntimeError(f"{self.name}: {sum(done)} cycles done, {n} tasks created")
        return n / elapsed

    async def dispatch(self, samples: int) -> float:
        """A claim waits (long poll) on an empty queue; a task is created 0.3 s after the last one was claimed; the
        latency runs from just before the create is sent to the claim's answer."""
        claimed: asyncio.Queue[tuple[int, float]] = asyncio.Queue()

        async def waiter() -> None:
            async with httpx.AsyncClient(base_url=self.url, timeout=60) as own:
                while True:
                    answer = await own.post("/api/agent/tasks/claim", json={"runner_id": "waiter",
                                                                            "wait_seconds": 30})
                    if answer.status_code != 200:
                        continue
                    task = answer.json()
                    claimed.put_nowait((task["id"], time.monotonic()))
                    await own.post(f"/api/agent/tasks/{task['id']}/finish", json=_finish_body(task))

        waiting = asyncio.create_task(waiter())
        latencies = []
        try:
            for _ in range(samples):
                await asyncio.sleep(0.3)
                sent = time.monotonic()
                created = (await self.http.post("/api/agent/tasks", json=TASK)).json()
                task_id, at = await asyncio.wait_for(claimed.get(), 30)
                if task_id != created["id"]:
                    raise RuntimeError(f"claimed task {task_id}, created {created['id']}")
                latencies.append(at - sent)
        finally:
            waiting.cancel()
            await asyncio.gather(waiting, return_exceptions=True)
        return statistics.median(latencies) * 1000

    async def start_waiters(self, waiters: int) -> Stopper:
        async def wait_forever(i: int) -> None:
            async with httpx.AsyncClient(base_url=self.url, timeout=60) as own:
                while True:
                    await own.post("/api/agent/tasks/claim", json={"runner_id": f"idle-{i}", "wait_seconds": 30})

        running = [asyncio.create_task(wait_forever(i)) for i in range(waiters)]

        async def stop() -> None:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

        return stop


class FloorProcess:
    """bench/floor_app.py as a subprocess on an ephemeral port."""

    def __init__(self, db: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = db.with_suffix(".log")
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-P", str(ROOT / "bench" / "floor_app.py"), "--port", str(self.port),
                 "--db", str(db)],
                env={**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"},
                stdout=log, stderr=log, start_new_session=True,
            )
        wait_until(self._up, 30, "floor app")

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"floor app exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
        try:
            return httpx.get(f"{self.url}/openapi.json", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(15)


# --- procrastinate ------------------------------------------------------------------------------------------------
def procrastinate_app(conninfo: str, on_job: Callable[[], None] | None = None):  # type: ignore[no-untyped-def]
    """An app with one no-op task, ``noop`` (``on_job`` is called inside it, for the dispatch figure)."""
    import procrastinate

    # it warns that the app lives in the main module, which only matters to its CLI's import of tasks
    logging.getLogger("procrastinate").setLevel(logging.ERROR)
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=conninfo))

    @app.task(name="noop")
    async def noop() -> None:
        if on_job is not None:
            on_job()

    return app


def procrastinate_worker(conninfo: str, ready: Event, go: Event) -> None:
    """One worker process (concurrency 1) that exits when no job is left."""
    async def work() -> None:
        app = procrastinate_app(conninfo)
        async with app.open_async():
            ready.set()
            await asyncio.to_thread(go.wait)
            await app.run_worker_async(concurrency=1, wait=False, install_signal_handlers=False)

    asyncio.run(work())


def processed_rate(conninfo: str, k: int, n: int) -> float:
    """K worker processes (started and connected before the clock starts) drain the n deferred jobs."""
    spawn = multiprocessing.get_context("spawn")
    go = spawn.Event()
    readies = [spawn.Event() for _ in range(k)]
    workers = [spawn.Process(target=procrastinate_worker, args=(conninfo, ready, go)) for ready in readies]
    for worker in workers:
        worker.start()
    for ready in readies:
        if not ready.wait(60):
            raise RuntimeError("a procrastinate worker did not start")
    started = time.perf_counter()
    go.set()
    for worker in workers:
        worker.join()
    return n / (time.perf_counter() - started)


class PeerSubject(Subject):
    """procrastinate on its own database of the same PostgreSQL server; a no-op job stands for a task."""

    def __init__(self, conninfo: str, stats: PgStats) -> None:
        super().__init__("procrastinate", stats)
        self.conninfo = conninfo
        self.app = procrastinate_app(conninfo)

    async def open(self) -> PeerSubject:
        await self.app.open_async()
        await self.app.schema_manager.apply_schema_async()
        return self

    async def close(self) -> None:
        await self.app.close_async()

    async def create_one(self, n: int) -> float:
        noop = self.app.tasks["noop"]
        started = time.perf_counter()
        for _ in range(n):
            await noop.defer_async()
        return n / (time.perf_counter() - started)

    async def create_batch(self, n: int) -> Figure:
        started = time.perf_counter()
        await self.app.tasks["noop"].batch_defer_async(*[{}] * n)
        return n / (time.perf_counter() - started)

    async def refill(self, n: int) -> None:
        await self.create_batch(n)

    async def process(self, k: int, n: int, claim_next: bool) -> Figure:
        return await asyncio.to_thread(processed_rate, self.conninfo, k, n)

    async def dispatch(self, samples: int) -> float:
        """An idle worker (LISTEN/NOTIFY) in this process; a job deferred 0.3 s after the last one ran; the latency
        runs from just before the defer to the job's start."""
        ran: asyncio.Queue[float] = asyncio.Queue()
        stamped = procrastinate_app(self.conninfo, on_job=lambda: ran.put_nowait(time.monotonic()))
        async with stamped.open_async():
            worker = asyncio.create_task(stamped.run_worker_async(concurrency=1, install_signal_handlers=False))
            await asyncio.sleep(1)  # the worker is listening
            latencies = []
            for _ in range(samples):
                await asyncio.sleep(0.3)
                sent = time.monotonic()
                await stamped.tasks["noop"].defer_async()
                latencies.append(await asyncio.wait_for(ran.get(), 30) - sent)
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)
        return statistics.median(latencies) * 1000

    async def start_waiters(self, waiters: int) -> Stopper:
        idle = procrastinate_app(self.conninfo)
        await idle.open_async()
        running = [asyncio.create_task(idle.run_worker_async(concurrency=1, install_signal_handlers=False))
                   for _ in range(waiters)]

        async def stop() -> None:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            await idle.close_async()

        return stop


# --- the run and its table ----------------------------------------------------------------------------------------
def cell(value: Figure) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"


def ratio(ours: Figure, other: Figure) -> str:
    if isinstance(ours, float) and isinstance(other, float) and other:
        return f"{ours / other:.2f}"
    return "-"


def table(floor: Subject, sqlite: Subject, pg: Subject, peer: Subject) -> str:
    """Markdown; ours/floor compares ours on SQLite with the floor, ours/peer ours on PostgreSQL with procrastinate;
    the claim_next rows compare with the floor's and the peer's plain cycles."""
    header = ("| figure | floor (FastAPI + SQLite) | ours, SQLite | ours, PostgreSQL | procrastinate | ours/floor "
              "| ours/peer | better |")
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    for row, better in ROWS:
        base = row.replace("finish+claim_next", "claim+finish")
        cells = [cell(s.figures.get(row)) for s in (floor, sqlite, pg, peer)]
        lines.append(f"| {row} | {' | '.join(cells)} | {ratio(sqlite.figures.get(row), floor.figures.get(base))} "
                     f"| {ratio(pg.figures.get(row), peer.figures.get(base))} | {better} |")
    return "\n".join(lines)


async def run(args: argparse.Namespace, work: Path) -> str:
    """Start everything, then measure row by row, each row on every subject in turn."""
    env = {"COHERENCE_LOG_LEVEL": "WARNING",
           "COHERENCE_REAP_INTERVAL": str(Settings.model_fields["coherence_reap_interval"].default)}
    floor_app = FloorProcess(work / "floor.db")
    server = PostgresServer(work / "pg").start()
    print(json.dumps({"postgresql": server.bindir.parent.name}), flush=True)
    apis: list[ApiProcess] = []
    subjects: list[Subject] = []
    peer = None
    try:
        ours_url, peer_url = server.new_database(), server.new_database()
        apis.append(ApiProcess(work / "home-sqlite", env=env).start())
        apis.append(ApiProcess(work / "home-pg", env={**env, "DATABASE_URL": ours_url}).start())
        peer = await PeerSubject(peer_url.replace("+psycopg", ""), PgStats(server, peer_url)).open()
        subjects = [HttpSubject("floor", floor_app.url), HttpSubject("ours-sqlite", apis[0].url),
                    HttpSubject("ours-postgresql", apis[1].url, PgStats(server, ours_url)), peer]
        for row, _better in ROWS:
            for subject in subjects:
                subject.record(row, await subject.measure(row, args))
        print(json.dumps({"load_average": os.getloadavg()}), flush=True)  # other work on the machine shows here
        return table(*subjects)
    finally:
        for subject in subjects:
            if isinstance(subject, HttpSubject):
                await subject.http.aclose()
        if peer is not None:
            await peer.close()
        for api in apis:
            api.stop()
        floor_app.stop()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="Tasks (jobs) per figure")
    parser.add_argument("--samples", type=int, default=40, help="Dispatches timed per target")
    parser.add_argument("--waiters", type=int, default=4, help="Waiting workers for the idle cost")
    parser.add_argument("--idle-seconds", type=float, default=30, help="Length of each idle window")
    args = parser.parse_args()
    from importlib.metadata import version

    print(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.machine(),
                      "cpus": os.cpu_count(), "python": platform.python_version(),
                      "procrastinate": version("procrastinate"), "load_average": os.getloadavg(), **vars(args)}),
          flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp:
        print(asyncio.run(run(args, Path(tmp))))


if __name__ == "__main__":
    main()

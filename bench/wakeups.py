#!/usr/bin/env python3
"""Idle cost and cross-replica dispatch (issue 14), against a throwaway PostgreSQL (and SQLite for the idle case).

Idle cost: N clients behave like idle runners on an empty queue (a long-poll claim of ``--wait`` seconds, again
and again, plus a registry heartbeat every ``--heartbeat`` seconds) for ``--seconds``; the figure is the database's
transactions per second from pg_stat_database (xact_commit + xact_rollback), in total and per client, next to
the API's own background with no client. On SQLite: whether the database file changed while they waited.
Cross-replica dispatch: one client long-polls replica B while tasks are created on replica A one by one; the
figure runs from the task's created_at to the claim's answer reaching the client.
Herd: what each task created costs in transactions while the clients wait (every waiter on the replica wakes).
Pre-ping: what the pool's pre-ping (store/db.py) adds to each transaction, counted the same way.

Run by hand: `.venv/bin/python bench/wakeups.py` (see bench/README.md, "Wake-ups").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # for tests.support

from tests.support.api import ApiProcess
from tests.support.postgres import PostgresServer

QUIET = {"COHERENCE_LOG_LEVEL": "WARNING"}


def transactions(url: str) -> int:
    """Transactions this database has committed and rolled back (a fresh stats snapshot; this read adds one)."""
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        total = conn.execute(sa.text("SELECT xact_commit + xact_rollback FROM pg_stat_database "
                                     "WHERE datname = current_database()")).scalar_one()
    engine.dispose()
    return int(total)


async def idle_client(url: str, number: int, wait: float, heartbeat: float, until: float) -> int:
    """One idle runner's traffic until ``until``; returns the claim requests it made.

    A task it gets is left running (the herd measure only counts what waking costs)."""
    runner_id, claims, next_beat = f"idle-{number}", 0, 0.0
    async with httpx.AsyncClient(base_url=url, timeout=wait + 30) as client:
        while time.monotonic() < until:
            if heartbeat and time.monotonic() >= next_beat:
                await client.post("/api/agent/runners/heartbeat",
                                  json={"runner_id": runner_id, "host": "bench", "pid": number, "version": "bench"})
                next_beat = time.monotonic() + heartbeat
            body = {"runner_id": runner_id, "wait_seconds": min(wait, max(until - time.monotonic(), 0.0))}
            response = await client.post("/api/agent/tasks/claim", json=body)
            assert response.status_code in (200, 204), response.text
            claims += 1
    return claims


async def idle_clients(url: str, clients: int, wait: float, heartbeat: float, seconds: float) -> int:
    until = time.monotonic() + seconds
    done = await asyncio.gather(*(idle_client(url, n, wait, heartbeat, until) for n in range(clients)))
    return sum(done)


async def trickle(url: str, rate: float, seconds: float) -> int:
    """Create a task every 1/``rate`` seconds for ``seconds``; returns how many."""
    made = 0
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            await asyncio.sleep(1 / rate)
            response = await client.post("/api/agent/tasks", json={"direction": f"t{made}", "task_type": "run",
                                                                   "command": "true"})
            assert response.status_code == 201, response.text
            made += 1
    return made


def herd(server: PostgresServer, args: argparse.Namespace, tmp: Path) -> None:
    """Transactions each created task costs while ``--clients`` runners wait on the same API (no heartbeats):
    a window with tasks trickling in, less a window without."""
    url = server.new_database()
    api = ApiProcess(tmp / "herd", env={**QUIET, "DATABASE_URL": url}).start()
    rates: dict[float, float] = {}
    made = 0
    try:
        for rate in (0.0, args.rate):
            time.sleep(11)  # idle backends flush their stats within 10 s: the window starts clean
            start, began = transactions(url), time.monotonic()

            async def window(rate: float = rate) -> int:
                waiting = idle_clients(api.url, args.clients, args.wait, 0.0, args.herd_seconds)
                if not rate:
                    await waiting
                    return 0
                return (await asyncio.gather(waiting, trickle(api.url, rate, args.herd_seconds)))[1]

            made = asyncio.run(window())
            spent = time.monotonic() - began
            time.sleep(11)
            rates[rate] = (transactions(url) - start - 1) / spent
    finally:
        api.stop()
    print(json.dumps({
        "measure": "herd", "clients": args.clients, "wait_seconds": args.wait, "tasks_per_s": args.rate,
        "tasks": made, "xact_per_s_idle": round(rates[0.0], 1), "xact_per_s_with_tasks": round(rates[args.rate], 1),
        "xact_per_task": round((rates[args.rate] - rates[0.0]) / args.rate, 1),
    }))


def store_files(home: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in home.glob("coherence.db*") if not p.name.endswith(("-shm", ".lock"))}


def idle_postgres(server: PostgresServer, args: argparse.Namespace, tmp: Path) -> None:
    url = server.new_database()
    api = ApiProcess(tmp / "idle-pg", env={**QUIET, "DATABASE_URL": url}).start()
    try:
        time.sleep(3)  # start-up writes (migrations, first stats flush) settle before the baseline
        first = transactions(url)
        time.sleep(args.baseline)
        baseline = (transactions(url) - first - 1) / args.baseline
        time.sleep(11)  # idle backends flush their stats within 10 s: the next window starts clean
        start, began = transactions(url), time.monotonic()
        claims = asyncio.run(idle_clients(api.url, args.clients, args.wait, args.heartbeat, args.seconds))
        spent = time.monotonic() - began
        time.sleep(11)  # the window's own transactions reach pg_stat_database
        total = (transactions(url) - start - 1 - 11 * baseline) / spent
    finally:
        api.stop()
    print(json.dumps({
        "measure": "idle_cost", "store": "postgresql", "clients": args.clients, "seconds": round(spent, 1),
        "wait_seconds": args.wait, "heartbeat_seconds": args.heartbeat, "claims_per_s": round(claims / spent, 1),
        "api_background_xact_per_s": round(baseline, 2), "xact_per_s": round(total, 1),
        "xact_per_s_per_client": round((total - baseline) / args.clients, 3),
    }))


def idle_sqlite(args: argparse.Namespace, tmp: Path) -> None:
    api = ApiProcess(tmp / "idle-sqlite", env=QUIET).start()
    try:
        before = store_files(api.home)
        claims = asyncio.run(idle_clients(api.url, args.clients, args.wait, 0.0, args.sqlite_seconds))
        unchanged = store_files(api.home) == before
    finally:
        api.stop()
    print(json.dumps({"measure": "idle_cost", "store": "sqlite", "clients": args.clients,
                      "seconds": args.sqlite_seconds, "wait_seconds": args.wait, "claims": claims,
                      "database_file_unchanged": unchanged}))


async def dispatch(url_a: str, url_b: str, tasks: int) -> list[float]:
    """Latencies (s) from created_at on A to the claim's answer from B reaching its client."""
    latencies: list[float] = []
    waiting = asyncio.Event()

    async def waiter() -> None:
        async with httpx.AsyncClient(base_url=url_b, timeout=90) as client:
            while len(latencies) < tasks:
                call = asyncio.ensure_future(client.post("/api/agent/tasks/claim",
                                                         json={"runner_id": "b", "wait_seconds": 60}))
                await asyncio.sleep(0.05)  # the request is in B's wait before the next task is made
                waiting.set()
                response = await call
                arrived = datetime.now(UTC)
                assert response.status_code == 200, response.text
                created = datetime.fromisoformat(response.json()["created_at"])
                latencies.append((arrived - created).total_seconds())

    async def creator() -> None:
        async with httpx.AsyncClient(base_url=url_a, timeout=30) as client:
            for n in range(tasks):
                await waiting.wait()
                waiting.clear()
                response = await client.post("/api/agent/tasks", json={"direction": f"d{n}", "task_type": "run",
                                                                       "command": "true"})
                assert response.status_code == 201, response.text

    await asyncio.gather(waiter(), creator())
    return latencies


def cross_replica(server: PostgresServer, args: argparse.Namespace, tmp: Path) -> None:
    url = server.new_database()
    a = ApiProcess(tmp / "a", env={**QUIET, "DATABASE_URL": url}).start()
    b = ApiProcess(tmp / "b", env={**QUIET, "DATABASE_URL": url}).start()
    try:
        ordered = sorted(asyncio.run(dispatch(a.url, b.url, args.tasks)))
    finally:
        a.stop()
        b.stop()
    print(json.dumps({
        "measure": "cross_replica_dispatch", "tasks": len(ordered),
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))] * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
    }))


def pre_ping(server: PostgresServer, rounds: int = 100) -> None:
    """Transactions per short transaction (SELECT 1) with and without the pool's pre-ping on checkout."""
    url = server.new_database()
    figures = {}
    for ping in (True, False):
        engine = sa.create_engine(url, pool_pre_ping=ping)
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        time.sleep(11)  # idle backends flush their stats within 10 s
        start = transactions(url)
        for _ in range(rounds):
            with engine.begin() as conn:
                conn.execute(sa.text("SELECT 1"))
        engine.dispose()
        time.sleep(11)
        figures[f"xact_per_transaction_pre_ping_{str(ping).lower()}"] = (transactions(url) - start - 1) / rounds
    print(json.dumps({"measure": "pre_ping", "rounds": rounds, **figures}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60.0, help="idle window on PostgreSQL")
    parser.add_argument("--sqlite-seconds", type=float, default=30.0, help="idle window on SQLite")
    parser.add_argument("--baseline", type=float, default=20.0, help="seconds of the API alone, no client")
    parser.add_argument("--wait", type=float, default=30.0, help="each long poll's wait_seconds")
    parser.add_argument("--heartbeat", type=float, default=15.0, help="registry heartbeat period; 0 = none")
    parser.add_argument("--tasks", type=int, default=200, help="tasks for the cross-replica dispatch")
    parser.add_argument("--rate", type=float, default=2.0, help="tasks/s created while the herd waits")
    parser.add_argument("--herd-seconds", type=float, default=30.0, help="each herd window")
    parser.add_argument("--only", choices=["idle-pg", "idle-sqlite", "dispatch", "pre-ping", "herd"],
                        action="append")
    args = parser.parse_args()
    only = set(args.only or ["idle-pg", "idle-sqlite", "dispatch", "pre-ping", "herd"])
    with tempfile.TemporaryDirectory(prefix="coherence-wakeups-") as tmp_name:
        tmp = Path(tmp_name)
        server = PostgresServer(tmp / "pg").start() if only - {"idle-sqlite"} else None
        try:
            if "idle-pg" in only and server:
                idle_postgres(server, args, tmp)
            if "idle-sqlite" in only:
                idle_sqlite(args, tmp)
            if "dispatch" in only and server:
                cross_replica(server, args, tmp)
            if "pre-ping" in only and server:
                pre_ping(server)
            if "herd" in only and server:
                herd(server, args, tmp)
        finally:
            if server:
                server.stop()


if __name__ == "__main__":
    main()

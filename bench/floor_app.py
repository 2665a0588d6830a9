#!/usr/bin/env python3
"""The floor ours is measured against: a bare FastAPI + SQLite app serving only create, claim and finish.

Same request and response shapes as ours (our request models and the contract's Task), same SQLite durability
(WAL, synchronous=NORMAL), a long-poll claim woken by creates; nothing else: no auth, leases, idempotency, metrics,
logging or health. Run by bench/throughput.py: `python -P bench/floor_app.py --port 8123 --db /tmp/floor.db`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import time
from datetime import UTC, datetime
from typing import Any

import uvicorn
from fastapi import FastAPI, Response
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse

from coherence_network.contract import Task, TaskStatus
from coherence_network.request_bodies import ClaimRequest, TaskCreate, TaskFinish

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id INTEGER PRIMARY KEY, direction TEXT NOT NULL, task_type TEXT NOT NULL, status TEXT NOT NULL,
    command TEXT, priority INTEGER NOT NULL, max_attempts INTEGER NOT NULL, timeout_seconds REAL, context TEXT,
    claim_token INTEGER NOT NULL DEFAULT 0, claimed_by TEXT, output TEXT, exit_code INTEGER,
    created_at TEXT NOT NULL, started_at TEXT, finished_at TEXT, updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_claim ON tasks (status, priority DESC, id);
"""


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _row(row: sqlite3.Row) -> dict[str, Any]:
    task = dict(row)
    task["context"] = json.loads(task["context"]) if task["context"] else None
    return task


def create_app(db_path: str) -> FastAPI:
    """One connection, used only from the event loop's thread: SQLite serialises writers anyway."""
    db = sqlite3.connect(db_path, isolation_level=None)
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(_SCHEMA)
    work = asyncio.Event()
    app = FastAPI()

    @app.post("/api/agent/tasks", status_code=201, response_model=Task)
    async def create(body: TaskCreate) -> dict[str, Any]:
        now = _now()
        row = db.execute(
            "INSERT INTO tasks (direction, task_type, status, command, priority, max_attempts, timeout_seconds,"
            " context, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING *",
            (body.direction, body.task_type, TaskStatus.PENDING, body.command, body.priority, body.max_attempts or 3,
             body.timeout_seconds, json.dumps(body.context) if body.context else None, now, now),
        ).fetchone()
        work.set()
        return _row(row)

    def claim_one(runner_id: str) -> sqlite3.Row | None:
        now = _now()
        return db.execute(
            "UPDATE tasks SET status = ?, claimed_by = ?, claim_token = claim_token + 1, started_at = ?,"
            " updated_at = ? WHERE id = (SELECT id FROM tasks WHERE status = ? ORDER BY priority DESC, id LIMIT 1)"
            " RETURNING *",
            (TaskStatus.RUNNING, runner_id, now, now, TaskStatus.PENDING),
        ).fetchone()

    @app.post("/api/agent/tasks/claim")
    async def claim(body: ClaimRequest) -> Response:
        deadline = time.monotonic() + body.wait_seconds
        while True:
            work.clear()
            row = claim_one(body.runner_id)
            if row is not None:
                return JSONResponse(jsonable_encoder(Task(**_row(row))))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return Response(status_code=204)
            try:
                await asyncio.wait_for(work.wait(), remaining)
            except TimeoutError:
                pass

    @app.post("/api/agent/tasks/{task_id}/finish", response_model=Task)
    async def finish(task_id: int, body: TaskFinish) -> Any:
        now = _now()
        row = db.execute(
            "UPDATE tasks SET status = ?, output = ?, exit_code = ?, finished_at = ?, updated_at = ?"
            " WHERE id = ? AND status = ? AND claim_token = ? RETURNING *",
            (body.status, body.output, body.exit_code, now, now, task_id, TaskStatus.RUNNING, body.claim_token),
        ).fetchone()
        if row is None:
            return JSONResponse({"detail": "not running or stale claim token"}, status_code=409)
        return _row(row)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--db", required=True, help="SQLite file (created)")
    args = parser.parse_args()
    uvicorn.run(create_app(args.db), host="127.0.0.1", port=args.port, log_level="warning", access_log=False,
                timeout_graceful_shutdown=1)  # a long-poll claim left waiting ends with the app


if __name__ == "__main__":
    main()

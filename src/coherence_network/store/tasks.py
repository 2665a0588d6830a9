"""TaskStore: every task operation as one short transaction, identical on SQLite and PostgreSQL.

State changes are single conditional UPDATEs (``WHERE status = ...``), so two writers can never both win; when the
UPDATE matches nothing the row is read to say why (404 or a conflict naming the current status).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from coherence_network.store.errors import Conflict, NotFound
from coherence_network.store.schema import TASK_STATUSES, UTCDateTime, components, runners, tasks

FINISH_STATUSES = ("completed", "failed", "needs_decision", "pending")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _row(row: sa.Row[Any] | None) -> dict[str, Any] | None:
    return None if row is None else dict(row._mapping)


_INSERT_TASK = tasks.insert().returning(*tasks.c)


@lru_cache(maxsize=None)
def _claim_statement(typed: bool, postgres: bool) -> sa.Update:
    """Built once: statement construction costs more than SQLite's execution of it."""
    pick = sa.select(tasks.c.id).where(tasks.c.status == "pending")
    if typed:
        pick = pick.where(tasks.c.task_type.in_(sa.bindparam("b_types", expanding=True)))
    pick = pick.order_by(tasks.c.priority.desc(), tasks.c.id.asc()).limit(1)
    if postgres:
        pick = pick.with_for_update(skip_locked=True)
    return (
        tasks.update()
        .where(tasks.c.id == pick.scalar_subquery(), tasks.c.status == "pending")
        .values(
            status="running",
            claimed_by=sa.bindparam("b_runner"),
            attempts=tasks.c.attempts + 1,
            claim_token=tasks.c.claim_token + 1,
            lease_expires_at=sa.bindparam("b_lease", type_=UTCDateTime),
            started_at=sa.bindparam("b_now", type_=UTCDateTime),
            finished_at=None,
            exit_code=None,
            progress_pct=None,
            current_step=None,
            updated_at=sa.bindparam("b_now", type_=UTCDateTime),
        )
        .returning(*tasks.c)
    )


@lru_cache(maxsize=None)
def _update_statement(needed: str, fenced: bool, keys: tuple[str, ...]) -> sa.Update:
    """``UPDATE tasks SET <keys> WHERE id = ? AND status = <needed> [AND claim_token = ?]``, built once per shape."""
    condition = [tasks.c.id == sa.bindparam("b_id"), tasks.c.status == needed]
    if fenced:
        condition.append(tasks.c.claim_token == sa.bindparam("b_token"))
    values = {key: sa.bindparam(f"v_{key}", type_=tasks.c[key].type) for key in keys}
    return tasks.update().where(*condition).values(values).returning(*tasks.c)


@dataclass
class ReapResult:
    """Expired leases handled by one reaper pass."""

    reclaimed: int = 0
    failed: int = 0


class TaskStore:
    """Tasks and the runner registry on one SQLAlchemy engine."""

    def __init__(
        self,
        engine: Engine,
        *,
        lease_seconds: float = 60.0,
        max_attempts: int = 3,
        tail_bytes: int = 8000,
        count_cache_seconds: float = 0.0,
    ):
        self.engine = engine
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts
        self.tail_bytes = tail_bytes
        self.count_cache_seconds = count_cache_seconds
        self._pg = engine.dialect.name == "postgresql"
        self._writes = 0  # bumped after each committed write; invalidates the count cache
        self._count_cache: tuple[int, float, dict[str, Any]] | None = None

    @contextmanager
    def _write(self) -> Iterator[sa.Connection]:
        """A write transaction; after it commits, cached reads are stale."""
        try:
            with self.engine.begin() as conn:
                yield conn
        finally:
            self._writes += 1

    # --- reads ----------------------------------------------------------------------------------------------
    def get(self, task_id: int) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row = _row(conn.execute(sa.select(tasks).where(tasks.c.id == task_id)).first())
        if row is None:
            raise NotFound(f"task {task_id} not found")
        return row

    def list(
        self,
        *,
        status: str | None = None,
        task_type: str | None = None,
        order: Literal["newest", "oldest"] = "newest",
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[dict[str, Any]], int]:
        """A page of tasks and the total that match the filter."""
        where = []
        if status:
            where.append(tasks.c.status == status)
        if task_type:
            where.append(tasks.c.task_type == task_type)
        ordering = tasks.c.id.desc() if order == "newest" else tasks.c.id.asc()
        query = sa.select(tasks).where(*where).order_by(ordering).limit(limit).offset(offset)
        with self.engine.connect() as conn:
            items = [dict(r._mapping) for r in conn.execute(query)]
            total = conn.execute(sa.select(sa.func.count()).select_from(tasks).where(*where)).scalar_one()
        return items, int(total)

    def count(self) -> dict[str, Any]:
        """{"total": n, "by_status": {status: n}} with every status present.

        Counting scans the status index, which grows with the store; dashboards poll it, so the answer is reused
        until this store writes again or ``count_cache_seconds`` pass (the bound on staleness for writes made
        through other processes)."""
        generation, now = self._writes, time.monotonic()
        cached = self._count_cache
        if cached and cached[0] == generation and now - cached[1] < self.count_cache_seconds:
            return {"total": cached[2]["total"], "by_status": dict(cached[2]["by_status"])}
        query = sa.select(tasks.c.status, sa.func.count()).group_by(tasks.c.status)
        with self.engine.connect() as conn:
            found = {status: int(n) for status, n in conn.execute(query)}
        by_status = {status: found.get(status, 0) for status in TASK_STATUSES}
        result = {"total": sum(found.values()), "by_status": by_status}
        self._count_cache = (generation, now, result)
        return {"total": result["total"], "by_status": dict(by_status)}

    # --- writes ---------------------------------------------------------------------------------------------
    def create(
        self,
        *,
        direction: str,
        task_type: str,
        command: str | None = None,
        priority: int = 0,
        max_attempts: int | None = None,
        timeout_seconds: float | None = None,
        context: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        now = utcnow()
        values = {
            "direction": direction,
            "task_type": task_type,
            "status": "pending",
            "command": command,
            "priority": priority,
            "max_attempts": max_attempts or self.max_attempts,
            "timeout_seconds": timeout_seconds,
            "context": context,
            "created_at": now,
            "updated_at": now,
        }
        with self._write() as conn:
            row = conn.execute(_INSERT_TASK, values).first()
        return dict(row._mapping)  # type: ignore[union-attr]

    def claim(
        self, runner_id: str, *, types: Iterable[str] | None = None, lease_seconds: float | None = None
    ) -> dict[str, Any] | None:
        """Atomically move the most urgent pending task to running for ``runner_id``; None when there is none."""
        now = utcnow()
        type_list = list(types or [])
        params: dict[str, Any] = {
            "b_runner": runner_id,
            "b_now": now,
            "b_lease": now + timedelta(seconds=lease_seconds or self.lease_seconds),
        }
        if type_list:
            params["b_types"] = type_list
        with self._write() as conn:
            return _row(conn.execute(_claim_statement(bool(type_list), self._pg), params).first())

    def heartbeat(
        self,
        task_id: int,
        claim_token: int,
        *,
        progress_pct: float | None = None,
        current_step: str | None = None,
        lease_seconds: float | None = None,
    ) -> dict[str, Any]:
        """Extend the lease of a running task (and record progress); only the current claim may do so."""
        now = utcnow()
        values: dict[str, Any] = {
            "lease_expires_at": now + timedelta(seconds=lease_seconds or self.lease_seconds),
            "updated_at": now,
        }
        if progress_pct is not None:
            values["progress_pct"] = progress_pct
        if current_step is not None:
            values["current_step"] = current_step
        return self._running_update(task_id, claim_token, values, "heartbeat")

    def finish(
        self,
        task_id: int,
        claim_token: int,
        *,
        status: str,
        output: str | None = None,
        exit_code: int | None = None,
        decision_prompt: str | None = None,
    ) -> dict[str, Any]:
        """End the current claim: completed, failed, needs_decision (with a question) or pending (released)."""
        if status not in FINISH_STATUSES:
            raise ValueError(f"status must be one of {', '.join(FINISH_STATUSES)}")
        if status == "needs_decision" and not decision_prompt:
            raise ValueError("needs_decision requires decision_prompt")
        now = utcnow()
        values: dict[str, Any] = {"status": status, "lease_expires_at": None, "updated_at": now}
        if output is not None:
            values["output"] = self._tail(output)
        if exit_code is not None:
            values["exit_code"] = exit_code
        if status in ("completed", "failed"):
            values["finished_at"] = now
        if status == "needs_decision":
            values.update(decision_prompt=decision_prompt, decision=None, decided_by=None, decided_at=None)
        if status == "pending":
            values["claimed_by"] = None
        return self._running_update(task_id, claim_token, values, "finish")

    def decide(self, task_id: int, decision: str, decided_by: str) -> dict[str, Any]:
        """Store a decision on a needs_decision task and return it to pending, so the next run sees it."""
        now = utcnow()
        values = {
            "status": "pending",
            "decision": decision,
            "decided_by": decided_by,
            "decided_at": now,
            "claimed_by": None,
            "updated_at": now,
        }
        return self._conditional_update(task_id, "needs_decision", values, "decide")

    def retry(self, task_id: int) -> dict[str, Any]:
        """Operator retry of a failed task: back to pending with a fresh set of attempts."""
        now = utcnow()
        values = {
            "status": "pending",
            "attempts": 0,
            "claimed_by": None,
            "finished_at": None,
            "exit_code": None,
            "updated_at": now,
        }
        return self._conditional_update(task_id, "failed", values, "retry")

    def reap(self, now: datetime | None = None) -> ReapResult:
        """Return running tasks whose lease expired to pending, or fail them when their attempts are spent."""
        now = now or utcnow()
        expired = sa.and_(tasks.c.status == "running", tasks.c.lease_expires_at < now)
        spent = tasks.c.attempts >= tasks.c.max_attempts
        common = {"lease_expires_at": None, "claimed_by": None, "updated_at": now}
        with self._write() as conn:
            failed = conn.execute(
                tasks.update()
                .where(expired, spent)
                .values(status="failed", finished_at=now, current_step="lease expired; attempts spent", **common)
            ).rowcount
            reclaimed = conn.execute(tasks.update().where(expired, ~spent).values(status="pending", **common)).rowcount
        return ReapResult(reclaimed=reclaimed, failed=failed)

    # --- runner registry ------------------------------------------------------------------------------------
    def runner_heartbeat(
        self, runner_id: str, *, host: str, pid: int, version: str, info: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        return self._seen(runners.c.id, runner_id, {"host": host, "pid": pid, "version": version, "info": info})

    def runners(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.select(runners).order_by(runners.c.last_seen.desc()))]

    def component_heartbeat(
        self, name: str, *, host: str, pid: int, version: str, info: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Record that a component (e.g. the project manager) is alive, with a summary any API replica can show."""
        return self._seen(components.c.name, name, {"host": host, "pid": pid, "version": version, "info": info})

    def components(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.select(components).order_by(components.c.name))]

    def _seen(self, key: sa.Column[Any], key_value: str, values: dict[str, Any]) -> dict[str, Any]:
        """Upsert a registry row (runners, components): refresh ``last_seen``, set ``first_seen`` on insert."""
        table = key.table
        now = utcnow()
        values = {**values, "last_seen": now}
        with self._write() as conn:
            updated = conn.execute(table.update().where(key == key_value).values(**values)).rowcount
            if not updated:
                try:
                    with conn.begin_nested():
                        conn.execute(table.insert().values({key.name: key_value, "first_seen": now, **values}))
                except sa.exc.IntegrityError:  # another replica registered it first
                    conn.execute(table.update().where(key == key_value).values(**values))
            row = conn.execute(sa.select(table).where(key == key_value)).first()
        return dict(row._mapping)  # type: ignore[union-attr]

    # --- helpers --------------------------------------------------------------------------------------------
    def _tail(self, output: str) -> str:
        encoded = output.encode("utf-8", errors="replace")
        if len(encoded) <= self.tail_bytes:
            return output
        return encoded[-self.tail_bytes :].decode("utf-8", errors="ignore")

    def _running_update(self, task_id: int, claim_token: int, values: dict[str, Any], action: str) -> dict[str, Any]:
        return self._conditional_update(task_id, "running", values, action, claim_token)

    def _conditional_update(
        self, task_id: int, needed: str, values: dict[str, Any], action: str, claim_token: int | None = None
    ) -> dict[str, Any]:
        keys = tuple(sorted(values))
        statement = _update_statement(needed, claim_token is not None, keys)
        params = {"b_id": task_id, "b_token": claim_token, **{f"v_{k}": values[k] for k in keys}}
        with self._write() as conn:
            row = conn.execute(statement, params).first()
            if row is not None:
                return dict(row._mapping)
            current = conn.execute(
                sa.select(tasks.c.status, tasks.c.claim_token).where(tasks.c.id == task_id)
            ).first()
        if current is None:
            raise NotFound(f"task {task_id} not found")
        status, token = current
        if claim_token is not None and status == "running" and token != claim_token:
            raise Conflict(
                f"cannot {action} task {task_id}: claim token {claim_token} is stale (current claim {token}); "
                "the lease expired and the task was claimed again",
                status,
            )
        raise Conflict(f"cannot {action} task {task_id}: its status is {status}, {action} needs {needed}", status)

"""Type policies: an operator's settings per task type (its limit of running tasks, its retry delays, its breaker),
each stored field overriding the setting's default and NULL meaning "the default". This room writes and lists them;
the claim enforces the limit in its own statement (store/limited_claims.py) and the retries read theirs."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from coherence_network.contract import TaskType
from coherence_network.contract_steering import POLICY_FIELDS
from coherence_network.store.audit import AuditBook
from coherence_network.store.schema import tasks, type_policies
from coherence_network.store.statements import RUNNING

_RUNNING = (
    sa.select(tasks.c.task_type, sa.func.count().label("running"))
    .where(tasks.c.status == RUNNING)
    .group_by(tasks.c.task_type)
)
_ONE = sa.select(type_policies).where(type_policies.c.task_type == sa.bindparam("b_type"))


def _checked(task_type: str, fields: dict[str, Any]) -> dict[str, Any]:
    """The fields as stored, or ValueError naming what is wrong (the API's request model says the same first)."""
    TaskType(task_type)  # ValueError for an unknown type
    unknown = fields.keys() - set(POLICY_FIELDS)
    if unknown:
        raise ValueError(f"unknown policy fields: {', '.join(sorted(unknown))}; known: {', '.join(POLICY_FIELDS)}")
    for name, value in fields.items():
        if value is None:
            continue
        if name in ("max_running", "breaker_failures") and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"{name} must be a whole number, not {value!r}")
        if name == "max_running" and value < 1:
            raise ValueError("max_running must be at least 1 (to hold a type entirely, pause it)")
        if name == "breaker_failures" and value < 0:
            raise ValueError("breaker_failures must be 0 or more")
        if name.endswith("_seconds") and not float(value) > 0:
            raise ValueError(f"{name} must be more than 0 seconds")
    return fields


def _unset(task_type: str) -> dict[str, Any]:
    """The policy of a type nobody set: every field at its default."""
    return {"task_type": task_type, **dict.fromkeys(POLICY_FIELDS), "updated_at": None, "updated_by": None}


class PolicyBook(AuditBook):
    """Set and list the type policies; every change is one audit record (action ``policy``, target the type)."""

    def set_type_policy(self, task_type: str, by: str, **fields: Any) -> tuple[dict[str, Any], bool]:
        """Change only the ``fields`` given (a value, or None: back to the setting's default); (the type's policy
        as stored now, changed). Setting what is already so changes nothing and records nothing: safe to repeat.
        A new or raised limit wakes the claims waiting for a slot of the type."""
        fields = _checked(task_type, fields)
        with self.transaction() as conn:
            now = self._lease_clock(conn)  # SQLite: the write lock first, so the read below is the latest
            return self._set_in(conn, now, task_type, by, fields)

    def _set_in(
        self, conn: sa.Connection, now: datetime, task_type: str, by: str, fields: dict[str, Any]
    ) -> tuple[dict[str, Any], bool]:
        stored = conn.execute(_ONE.with_for_update(), {"b_type": task_type}).first()
        before = dict(stored._mapping) if stored is not None else dict.fromkeys(POLICY_FIELDS)
        after = {**{name: before[name] for name in POLICY_FIELDS}, **fields}
        low, high = after["retry_delay_seconds"], after["retry_max_delay_seconds"]
        if low is not None and high is not None and high < low:
            raise ValueError(f"retry_max_delay_seconds ({high}) must not be below retry_delay_seconds ({low})")
        changes = {name: [before[name], value] for name, value in fields.items() if before[name] != value}
        if not changes:
            return self._shown(conn, task_type, stored), False
        row = {**after, "updated_at": now, "updated_by": by}
        if stored is None:
            try:
                with conn.begin_nested():  # as the pauses: a savepoint, so a lost race keeps the rest
                    conn.execute(type_policies.insert().values(task_type=task_type, **row))
            except sa.exc.IntegrityError:  # a concurrent first set of this type won: change its row instead
                return self._set_in(conn, now, task_type, by, fields)
        else:
            conn.execute(type_policies.update().where(type_policies.c.task_type == task_type).values(row))
        self._audit_in(conn, by, "policy", target=task_type, detail=changes)
        old, new = changes.get("max_running", (None, None))
        if "max_running" in changes and (new is None or (old is not None and new > old)):
            self._wake(conn)  # a limit raised or cleared frees slots: waiting claims look again
        return self._shown(conn, task_type, conn.execute(_ONE, {"b_type": task_type}).first()), True

    def type_policies(self, every_type: Iterable[str] = ()) -> list[dict[str, Any]]:
        """Every stored policy row (and, for each of ``every_type`` with none, its unset fields), by type, each with
        the number of its tasks running now."""
        def read(conn: sa.Connection) -> list[dict[str, Any]]:
            running = {row.task_type: row.running for row in conn.execute(_RUNNING)}
            stored = {row.task_type: dict(row._mapping) for row in conn.execute(sa.select(type_policies))}
            for task_type in every_type:
                stored.setdefault(task_type, _unset(task_type))
            return [{**stored[t], "running": running.get(t, 0)} for t in sorted(stored)]

        return self._read(read)

    @staticmethod
    def _shown(conn: sa.Connection, task_type: str, stored: sa.Row[Any] | None) -> dict[str, Any]:
        """A type's policy as answered: its stored fields (all None when it has none) and its running count."""
        running = conn.execute(sa.select(sa.func.count()).where(tasks.c.status == RUNNING,
                                                                tasks.c.task_type == task_type)).scalar_one()
        shown = dict(stored._mapping) if stored is not None else _unset(task_type)
        return {**shown, "running": running}

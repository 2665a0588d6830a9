"""The registry of who is alive: runners and long-lived components (the project manager, the monitor) upsert their
row with each heartbeat, so every API replica sees the same registry; rows of the long gone are forgotten."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

from coherence_network.clock import utcnow
from coherence_network.grading import forgotten_runner
from coherence_network.store.core import StoreCore
from coherence_network.store.schema import components, runners
from coherence_network.store.statements import Rows


class Registry(StoreCore):
    """Runner and component rows."""

    def runner_heartbeat(
        self, runner_id: str, *, host: str, pid: int, version: str, info: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        return self._seen(runners.c.id, runner_id, {"host": host, "pid": pid, "version": version, "info": info})

    def runners(self) -> Rows:
        with self.connection() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.select(runners).order_by(runners.c.last_seen.desc()))]

    def prune_runners(self, seen_before: datetime, stopped_before: datetime | None = None, *,
                      dry_run: bool = False) -> int:
        """Forget runners not seen since ``seen_before`` (restarts leave old ids behind), and those that said they
        stopped (info.stopped) before ``stopped_before``; a live one re-registers with its next heartbeat. Returns
        how many rows went (``dry_run``: would go, nothing deleted)."""
        stopped_before = stopped_before or seen_before
        with self.connection() as conn:  # the API asks every few seconds: most passes find nothing, write nothing
            old = conn.execute(sa.select(runners.c.id, runners.c.last_seen, runners.c.info)
                               .where(runners.c.last_seen < max(seen_before, stopped_before))).all()
        gone = [r.id for r in old if forgotten_runner(r.last_seen, r.info, seen_before, stopped_before)]
        if not gone or dry_run:
            return len(gone)
        with self.transaction() as conn:
            return conn.execute(runners.delete().where(runners.c.id.in_(gone))).rowcount

    def component_heartbeat(
        self, name: str, *, host: str, pid: int, version: str, info: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Record that a component (e.g. the project manager) is alive, with a summary any API replica can show."""
        return self._seen(components.c.name, name, {"host": host, "pid": pid, "version": version, "info": info})

    def components(self) -> Rows:
        with self.connection() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.select(components).order_by(components.c.name))]

    def _seen(self, key: sa.Column[Any], key_value: str, values: dict[str, Any]) -> dict[str, Any]:
        """Upsert a registry row (runners, components): refresh ``last_seen``, set ``first_seen`` on insert."""
        table = key.table
        now = utcnow()
        values = {**values, "last_seen": now}
        with self.transaction() as conn:
            updated = conn.execute(table.update().where(key == key_value).values(**values)).rowcount
            if not updated:
                try:
                    with conn.begin_nested():
                        conn.execute(table.insert().values({key.name: key_value, "first_seen": now, **values}))
                except sa.exc.IntegrityError:  # another replica registered it first
                    conn.execute(table.update().where(key == key_value).values(**values))
            row = conn.execute(sa.select(table).where(key == key_value)).first()
        return dict(row._mapping)  # type: ignore[union-attr]

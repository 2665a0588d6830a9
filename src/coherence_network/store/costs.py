"""Costs and caps: the spend ledger each finish appends to, the sums read from it (today, per agent, per item, per
day), and the operator's caps (task, item, day) with their settings' defaults. Today's spend is the runs finished
since 00:00 UTC plus what the runs going on have reported so far (their heartbeats: ``running_cost_usd``).

The day cap is enforced by the claim's own statement (store/statements.py, ``_WITHIN_DAY_CAP``), so on every
replica it is read in the claim's transaction: once today's spend reaches it, the claim hands out no agent task
(``command IS NULL``); ``run`` tasks go on. A claim adds no spend, so the day ends past its cap by at most what the
runs already going when it was reached still spend. A raised cap wakes the waiting claims on every replica.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from coherence_network.agents import Usage
from coherence_network.clock import utcnow
from coherence_network.store.audit import AuditBook
from coherence_network.store.schema import UTCDateTime, cost_caps, spend
from coherence_network.store.statements import RUNNING_COST

COST_CAPS = ("task", "item", "day")
MAX_DAYS = 90
_SINCE = sa.bindparam("b_since", type_=UTCDateTime)
_UNTIL = sa.bindparam("b_until", type_=UTCDateTime)
_STORED = sa.select(cost_caps)
_ONE_CAP = sa.select(cost_caps.c.usd).where(cost_caps.c.cap == sa.bindparam("b_cap"))
_SUMS = (sa.func.coalesce(sa.func.sum(spend.c.cost_usd), 0.0).label("cost_usd"),
         sa.func.coalesce(sa.func.sum(spend.c.tokens_in), 0).label("tokens_in"),
         sa.func.coalesce(sa.func.sum(spend.c.tokens_out), 0).label("tokens_out"),
         sa.func.count().label("runs"))
_BETWEEN = sa.select(*_SUMS).where(spend.c.at >= _SINCE, spend.c.at < _UNTIL)
_PER_AGENT = (sa.select(spend.c.agent, *_SUMS).where(spend.c.at >= _SINCE)
              .group_by(spend.c.agent).order_by(spend.c.agent))
_ITEM = sa.select(*_SUMS).where(spend.c.item == sa.bindparam("b_item"))
_ALL_TIME_PER_AGENT = sa.select(spend.c.agent, *_SUMS).group_by(spend.c.agent).order_by(spend.c.agent)


@dataclass(frozen=True)
class CapDefaults:
    """The settings' caps in US dollars (COHERENCE_COST_CAP_<CAP>_USD), for a cap no operator set; 0 = none."""

    task: float = 0.0
    item: float = 0.0
    day: float = 0.0


def day_start(now: datetime) -> datetime:
    """00:00 UTC of ``now``'s day: the day cap's day."""
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


def record_spend_in(conn: sa.Connection, now: datetime, task: dict[str, Any], agent: str | None,
                    usage: Usage | None) -> None:
    """A finished run's usage into the ledger, inside its finish's transaction (nothing when it reported none)."""
    if usage is None or usage == Usage():
        return
    conn.execute(spend.insert().values(at=now, task_id=task["id"], item=task.get("item"), agent=agent,
                                       tokens_in=usage.input_tokens, tokens_out=usage.output_tokens,
                                       cost_usd=usage.cost_usd))


class CostBook(AuditBook):
    """The operator's caps and the spend they are measured against."""

    cap_defaults: CapDefaults = CapDefaults()  # set from the settings by open_task_store

    def _cap_in(self, conn: sa.Connection, cap: str) -> float:
        stored = conn.execute(_ONE_CAP, {"b_cap": cap}).scalar()
        return float(getattr(self.cap_defaults, cap) if stored is None else stored)

    def day_cap_params(self, now: datetime) -> dict[str, Any]:
        """What a claim's statement binds for the day cap it checks itself (store/statements.py): the setting's
        cap, for when no operator set one, and the start of today."""
        return {"b_day_cap": self.cap_defaults.day, "b_day_start": day_start(now)}

    def caps(self) -> dict[str, dict[str, Any]]:
        """Each cap: usd (in force: the operator's, else the default; 0 = none), default_usd, set_by, set_at."""
        rows = self._read(lambda conn: {r.cap: r for r in conn.execute(_STORED)})
        shown: dict[str, dict[str, Any]] = {}
        for cap, default in asdict(self.cap_defaults).items():
            row = rows.get(cap)
            shown[cap] = {"usd": default if row is None else row.usd, "default_usd": default,
                          "set_by": row.updated_by if row else None, "set_at": row.updated_at if row else None}
        return shown

    def set_caps(self, by: str, caps: dict[str, float]) -> tuple[dict[str, dict[str, Any]], bool]:
        """Set the caps given (US dollars, 0 = none); (all caps now, changed). Each change is an audit record
        (action ``cap``, target the cap, before and after in its detail); the same value again records nothing.
        A changed day cap wakes the claims waiting on every replica (a raised one lets agent tasks out again)."""
        for cap, usd in caps.items():
            if cap not in COST_CAPS:
                raise ValueError(f"unknown cap {cap!r}; one of: {', '.join(COST_CAPS)}")
            if not 0 <= usd <= 1e9:
                raise ValueError(f"a cap is 0 (none) to 1e9 US dollars, not {usd!r}")
        changed = False
        with self.transaction() as conn:
            now = utcnow()
            for cap, usd in caps.items():
                before = self._cap_in(conn, cap)
                if before == usd:
                    continue
                updated = conn.execute(cost_caps.update().where(cost_caps.c.cap == cap)
                                       .values(usd=usd, updated_at=now, updated_by=by)).rowcount
                if not updated:
                    conn.execute(cost_caps.insert().values(cap=cap, usd=usd, updated_at=now, updated_by=by))
                self._audit_in(conn, by, "cap", target=cap, before=f"{before:g}", after=f"{usd:g}",
                               detail={"before_usd": before, "after_usd": usd})
                changed = True
                if cap == "day":
                    self._wake(conn)
        return self.caps(), changed

    def spend_today(self, now: datetime | None = None) -> dict[str, Any]:
        """Today's spend (UTC day) against the day cap: cost_usd, tokens_in, tokens_out, runs (finished runs),
        running_usd (what runs going on reported so far), cap_usd, reached (finished and running together)."""
        now = now or utcnow()
        start = day_start(now)

        def read(conn: sa.Connection) -> dict[str, Any]:
            sums = dict(conn.execute(_BETWEEN, {"b_since": start, "b_until": start + timedelta(days=1)}).one()
                        ._mapping)
            cap = self._cap_in(conn, "day")
            running = float(conn.execute(RUNNING_COST).scalar() or 0.0)
            return {"day": start.date().isoformat(), **sums, "running_usd": running, "cap_usd": cap,
                    "reached": cap > 0 and sums["cost_usd"] + running >= cap}

        return self._read(read)

    def spend(self, *, item: str | None = None, days: int = 7) -> dict[str, Any]:
        """The spend read: today (against the day cap), today per agent, the last ``days`` UTC days, and with
        ``item`` that item's whole spend against the item cap."""
        if not 1 <= days <= MAX_DAYS:
            raise ValueError(f"days must be 1..{MAX_DAYS}")
        now = utcnow()
        start = day_start(now)

        def read(conn: sa.Connection) -> dict[str, Any]:
            agents = [dict(r._mapping) for r in conn.execute(_PER_AGENT, {"b_since": start})]
            per_day = []
            for back in range(days):
                since = start - timedelta(days=back)
                sums = conn.execute(_BETWEEN, {"b_since": since, "b_until": since + timedelta(days=1)}).one()
                per_day.append({"day": since.date().isoformat(), **sums._mapping})
            found: dict[str, Any] = {"agents": agents, "days": per_day}
            if item is not None:
                found["item"] = self._item_spend_in(conn, item)
            return found

        return {"today": self.spend_today(now), **self._read(read)}

    def _item_spend_in(self, conn: sa.Connection, item: str) -> dict[str, Any]:
        sums = dict(conn.execute(_ITEM, {"b_item": item}).one()._mapping)
        cap = self._cap_in(conn, "item")
        return {"item": item, **sums, "cap_usd": cap, "reached": cap > 0 and sums["cost_usd"] >= cap}

    def spend_per_agent(self) -> list[dict[str, Any]]:
        """Every run's usage ever recorded, per agent (the /metrics counters)."""
        return self._read(lambda conn: [dict(r._mapping) for r in conn.execute(_ALL_TIME_PER_AGENT)])

"""The claim's statements under limits (type_policies.max_running, issue 21 item 6): which shape a claim takes and,
where a limit applies, how it never hands out more of a type than its limit allows, on both stores and with any
number of API replicas.

- SQLite: the claim holds the store's write lock (StoreCore._lease_clock), so the count of running tasks inside the
  claim's own UPDATE cannot change under it; a single claim always carries the limit filter (one look at the policy
  table, cheaper than a statement to ask whether it is empty).
- PostgreSQL (READ COMMITTED, SKIP LOCKED): two claims could each count the same running tasks and both claim. So a
  claim first locks the policy rows of the limited types it could hand out (statements.limits_statement): claims of
  a limited type take turns, and the UPDATE after the lock counts with a snapshot that holds every claim committed
  before. A claim whose types have no limit finds no row to lock and keeps today's statement.
- A claim of several tasks with a limited type among its own would pick them in one statement, counted once (four
  of a type with two slots free): it claims one task per statement instead, each counting the ones before.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from coherence_network.store.statements import claim_statement, limits_statement


def claim_rows(
    conn: sa.Connection, postgres: bool, max_tasks: int, typed: bool, replayable: bool, params: dict[str, Any]
) -> list[dict[str, Any]]:
    """Claim up to ``max_tasks`` tasks inside the caller's transaction (``params`` bound as the claim statement
    wants them); the rows claimed, in no promised order."""
    if postgres:
        limited = bool(conn.execute(limits_statement(typed, True), params).all())
    elif max_tasks > 1:
        limited = conn.execute(limits_statement(typed, False), params).first() is not None
    else:
        limited = True
    if max_tasks == 1 or not limited:
        statement = claim_statement(typed, postgres, max_tasks > 1, replayable, limited)
        return [dict(r._mapping) for r in conn.execute(statement, params)]
    claimed: list[dict[str, Any]] = []
    while len(claimed) < max_tasks:
        first = not claimed  # only the first can be a replay: the next ones see this request's own claims
        statement = claim_statement(typed, postgres, False, replayable and first, True)
        row = conn.execute(statement, params).first()
        if row is None:
            break
        claimed.append(dict(row._mapping))
    return claimed

"""The claim under limits (type_policies.max_running, issue 21 item 6): it never hands out more of a type than its
limit allows, on both stores and with any number of API replicas, and a claim of unlimited types costs what it did.

- SQLite, one task: the claim holds the store's write lock (StoreCore._lease_clock), so the count of running tasks
  inside its own UPDATE cannot change under it: one statement that leaves out the types at their limit (FILTERED).
- Otherwise (PostgreSQL, or several tasks at once) the claim first takes what it picks of types without a limit, in
  the statement it always had (UNLIMITED_ONLY: when no type is limited, that is the whole claim; on PostgreSQL a
  claim of one task makes it outside a transaction, statements.claim_one_statement). Only a claim left
  short looks for limited types among its own, and on PostgreSQL locks their policy rows (statements.
  limits_statement): under READ COMMITTED two claims could each count the same running tasks and both claim, so
  claims of a limited type take turns, and each statement after the lock counts with a snapshot that holds every
  claim committed before. Then it claims one task per statement (FILTERED), each counting the ones before: a pick of
  several in one statement would be counted once (four of a type with two slots free).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from coherence_network.store.statements import FILTERED, UNLIMITED_ONLY, claim_statement, limits_statement


def claim_rows(
    conn: sa.Connection, postgres: bool, max_tasks: int, typed: bool, replayable: bool, params: dict[str, Any],
    unlimited_first: bool = True,
) -> list[dict[str, Any]]:
    """Claim up to ``max_tasks`` tasks inside the caller's transaction (``params`` bound as the claim statement
    wants them); the rows claimed, in no promised order. Without ``unlimited_first`` (a claim that has just found
    nothing of a type without a limit, outside this transaction) it goes straight to the limits' lock."""
    if not postgres and max_tasks == 1:
        statement = claim_statement(typed, False, False, replayable, FILTERED)
        return [dict(r._mapping) for r in conn.execute(statement, params)]
    claimed: list[dict[str, Any]] = []
    if unlimited_first:
        statement = claim_statement(typed, postgres, max_tasks > 1, replayable, UNLIMITED_ONLY)
        claimed = [dict(r._mapping) for r in conn.execute(statement, params)]
    if len(claimed) == max_tasks or not conn.execute(limits_statement(typed, postgres), params).all():
        return claimed
    while len(claimed) < max_tasks:
        # only a claim that took nothing yet can be a replay: the next statements see this request's own claims
        statement = claim_statement(typed, postgres, False, replayable and not claimed, FILTERED)
        row = conn.execute(statement, params).first()
        if row is None:
            break
        claimed.append(dict(row._mapping))
    return claimed

"""Stored history for tests of figures: task rows inserted as they are stored (the store's triggers count the settled
ones in the hourly rollup, as they count a task a move settles)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from coherence_network.store.schema import tasks


def insert_history(conn: sa.Connection, rows: Sequence[dict[str, Any]]) -> list[int]:
    """Insert ``rows`` into tasks; their ids."""
    return list(conn.execute(tasks.insert().returning(tasks.c.id, sort_by_parameter_order=True), rows).scalars())

"""Stored history for tests of figures: task rows inserted as they are stored, and the settled ones counted in the
hourly rollup by the store's own helper, as the moves that settled them would have."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from coherence_network.store.rollup import SETTLED_FIELDS, record_settled_in
from coherence_network.store.schema import tasks


def insert_history(conn: sa.Connection, rows: Sequence[dict[str, Any]]) -> list[int]:
    """Insert ``rows`` into tasks and add the settled ones to the rollup; their ids."""
    inserted = conn.execute(tasks.insert().returning(tasks.c.id, *SETTLED_FIELDS.selected_columns,
                                                     sort_by_parameter_order=True), rows).mappings().all()
    record_settled_in(conn, conn.dialect.name == "postgresql", inserted)
    return [row["id"] for row in inserted]

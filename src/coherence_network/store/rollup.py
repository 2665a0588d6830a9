"""The hourly rollup of settled tasks (schema.task_hours): kept by the database, read by metrics and charts.

Triggers on tasks (revision 0018) add a task to its hour's row when it is stored or updated settled (completed,
failed, cancelled: a finish, a cancel, the reaper) and take it back when an update moves it out (a retry), in the
statement's own transaction: no move sends a statement for it (revision 0016 filled the rollup with the same
buckets from the tasks then stored). Reads then sum a few hundred rows (hours x task types) for any window up to
ROLLUP_KEEP, however many tasks settled in it. Windows are whole UTC hours: an hour counts in [since, until) when it
starts inside it, so "the last 24 h" is the current hour and the 23 before it. Percentiles come from the buckets
(``estimate``): within a factor sqrt(2) of the exact figure, usually much closer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from coherence_network.store.schema import (
    DURATION_BOUNDS,
    DURATION_BUCKETS,
    DURATIONS,
    HOUR_OUTCOMES,
    bucket_column,
    task_hours,
)

HOUR = 3600
ROLLUP_KEEP = timedelta(days=31)  # the longest window read (the console's 30-day chart from a day's start) and a day
_COUNTED = [*HOUR_OUTCOMES, *(bucket_column(d, k) for d in DURATIONS for k in range(DURATION_BUCKETS))]


def hour_of(moment: datetime) -> int:
    """The hour holding ``moment``, in whole hours since 1970-01-01 UTC (task_hours.hour)."""
    return math.floor(moment.timestamp() / HOUR)


def hour_start(hour: int) -> datetime:
    return datetime.fromtimestamp(hour * HOUR, UTC)


def hours_in(since: datetime, until: datetime) -> tuple[int, int]:
    """The first and last hour starting in [since, until): the hours a window counts."""
    return math.ceil(since.timestamp() / HOUR), math.ceil(until.timestamp() / HOUR) - 1


def prune_in(conn: sa.Connection, before: datetime) -> int:
    """Delete the hours before ``before`` (retention: older than any window reads)."""
    return conn.execute(task_hours.delete().where(task_hours.c.hour < hour_of(before))).rowcount


def _fold_shards() -> sa.Insert:
    """PostgreSQL: the shards (1 and up) of the hours before b_hour deleted and added into their hour's shard 0, in
    one statement (a data-modifying CTE)."""
    folded = (task_hours.delete()
              .where(task_hours.c.hour < sa.bindparam("b_hour", type_=sa.Integer), task_hours.c.shard != 0)
              .returning(*task_hours.c).cte("folded"))
    sums = (sa.select(folded.c.hour, folded.c.task_type, sa.literal(0, sa.SmallInteger),
                      *(sa.func.sum(folded.c[name]) for name in _COUNTED))
            .group_by(folded.c.hour, folded.c.task_type))
    insert = postgresql.insert(task_hours).from_select(["hour", "task_type", "shard", *_COUNTED], sums)
    return insert.on_conflict_do_update(index_elements=[task_hours.c.hour, task_hours.c.task_type, task_hours.c.shard],
                                        set_={name: task_hours.c[name] + insert.excluded[name] for name in _COUNTED})


_FOLD_SHARDS = _fold_shards()


def fold_shards_in(conn: sa.Connection, postgres: bool, before: datetime) -> None:
    """Fold the shards of the hours that ended before ``before``'s hour into one row each: concurrent finishes write
    an hour and type in up to 8 rows on PostgreSQL (revision 0018), and once the hour is over the rows are only read.
    SQLite writes one shard: nothing to fold."""
    if postgres:
        conn.execute(_FOLD_SHARDS, {"b_hour": hour_of(before)})


# The reads, built once (building a statement costs more than SQLite runs these): a window is hours b_first..b_last.
_IN_WINDOW = task_hours.c.hour.between(sa.bindparam("b_first", type_=sa.Integer),
                                       sa.bindparam("b_last", type_=sa.Integer))
_OUTCOME_SUMS = [sa.func.sum(task_hours.c[name]) for name in HOUR_OUTCOMES]
_SLOT = ((task_hours.c.hour - sa.bindparam("b_first", type_=sa.Integer))
         // sa.bindparam("b_each", type_=sa.Integer)).label("slot")
_OUTCOMES_BY_SLOT = sa.select(_SLOT, *_OUTCOME_SUMS).where(_IN_WINDOW).group_by(_SLOT)
_OUTCOMES_BY_TYPE = (sa.select(task_hours.c.task_type, *_OUTCOME_SUMS).where(_IN_WINDOW)
                     .group_by(task_hours.c.task_type))
_RECENT = (task_hours.c.hour >= sa.bindparam("b_split", type_=sa.Integer)).label("recent")
_SUMS_BY_TYPE = (sa.select(task_hours.c.task_type, _RECENT, *(sa.func.sum(task_hours.c[name]) for name in _COUNTED))
                 .where(_IN_WINDOW).group_by(task_hours.c.task_type, _RECENT))
NOTHING = (0,) * len(_COUNTED)  # a row of sums with nothing counted


def outcomes_by_slot(conn: sa.Connection, first: int, last: int, hours_each: int) -> dict[int, dict[str, int]]:
    """{slot: {outcome: n}} over the hours first..last, slot k holding hours first + k * hours_each onwards (only
    slots with a row): folded in SQL, so a month by day returns 30 rows, not 720."""
    found = conn.execute(_OUTCOMES_BY_SLOT, {"b_first": first, "b_last": last, "b_each": hours_each})
    return {int(slot): dict(zip(HOUR_OUTCOMES, map(int, counts))) for slot, *counts in found}


def outcomes_by_type(conn: sa.Connection, first: int, last: int) -> dict[str, dict[str, int]]:
    """{task_type: {outcome: n}} over the hours first..last."""
    found = conn.execute(_OUTCOMES_BY_TYPE, {"b_first": first, "b_last": last})
    return {task_type: dict(zip(HOUR_OUTCOMES, map(int, counts))) for task_type, *counts in found}


def sums_by_type(conn: sa.Connection, first: int, last: int, split: int) -> dict[tuple[str, bool], tuple[int, ...]]:
    """{(task_type, hour >= split): the sums of every counted column} over the hours first..last, so two windows
    (first..last and split..last) come from one read. Read a row with ``outcomes`` and ``buckets``."""
    found = conn.execute(_SUMS_BY_TYPE, {"b_first": first, "b_last": last, "b_split": split})
    return {(task_type, bool(recent)): tuple(map(int, sums)) for task_type, recent, *sums in found}


def add_rows(one: Sequence[int], other: Sequence[int]) -> tuple[int, ...]:
    """Two rows of sums added column by column."""
    return tuple(a + b for a, b in zip(one, other))


def outcomes(row: Sequence[int]) -> dict[str, int]:
    """{outcome: n} out of a row of sums."""
    return dict(zip(HOUR_OUTCOMES, row))


def buckets(row: Sequence[int], duration: str) -> Sequence[int]:
    """The bucket counts of ``duration`` (run or queue) out of a row of sums."""
    start = len(HOUR_OUTCOMES) + DURATIONS.index(duration) * DURATION_BUCKETS
    return row[start:start + DURATION_BUCKETS]


def _at_rank(counts: Sequence[int], rank: int) -> float:
    """The value of rank ``rank`` (0-based): the bucket holding it, and inside it the rank's place on a log scale
    (linear in bucket 0, from 0 s; the open last bucket answers its lower bound)."""
    below = 0
    for k, count in enumerate(counts):
        if rank < below + count:
            share = (rank - below + 0.5) / count
            if k == 0:
                return DURATION_BOUNDS[0] * share
            if k == len(DURATION_BOUNDS):
                return DURATION_BOUNDS[-1]
            low, high = DURATION_BOUNDS[k - 1], DURATION_BOUNDS[k]
            return low * (high / low) ** share
        below += count
    return 0.0


def estimate(counts: Sequence[int], p: float) -> float:
    """The ``p`` percentile of the durations counted in ``counts`` (per bucket), as percentile_cont takes it: between
    the two ranks around p * (n - 1), each valued inside its bucket. An estimate: each rank's value is within its
    bucket's factor (sqrt(2)) of the true one, so the percentile is too, for durations from 0.1 s to 4.9 days."""
    n = sum(counts)
    position = p * (n - 1)
    low = math.floor(position)
    first, second = _at_rank(counts, low), _at_rank(counts, min(low + 1, n - 1))
    return first + (second - first) * (position - low)


def add_into(total: dict[str, int], more: Iterable[tuple[str, int]]) -> dict[str, int]:
    """``total`` with each (column, n) added."""
    for name, n in more:
        total[name] = total.get(name, 0) + n
    return total

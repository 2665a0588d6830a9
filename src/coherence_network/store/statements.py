"""The task queries' named statements: each built once (building a statement costs more than SQLite runs it),
keyed by the shape it takes, and shared by the task reads and moves."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from coherence_network.contract import PAUSE_ALL, TaskStatus
from coherence_network.store.errors import Conflict
from coherence_network.store.schema import UTCDateTime, cost_caps, pauses, spend, tasks, type_policies
from coherence_network.store.search import COUNT_CAP

PENDING, RUNNING, FAILED = TaskStatus.PENDING.value, TaskStatus.RUNNING.value, TaskStatus.FAILED.value
# The fields that make a create the same create: a reused idempotency key with other values is a client bug.
_IDEMPOTENT_FIELDS = ("direction", "task_type", "command")


def row_dict(row: sa.Row[Any] | None) -> dict[str, Any] | None:
    return None if row is None else dict(row._mapping)


INSERT_TASKS = tasks.insert().returning(*tasks.c, sort_by_parameter_order=True)
# One create in one statement (the client's usual call). With a key: a key already stored makes no row (and no
# error), and only then is it read. On PostgreSQL the row made also sends the wake-up (pg_notify in RETURNING, for
# a row inserted only): one round trip fewer than a NOTIFY of its own. Keyed by (dialect, keyed).
NOTIFIED = "notified"
_NOTIFY_MADE = sa.func.pg_notify(sa.bindparam("b_channel"), sa.bindparam("b_payload")).label(NOTIFIED)


def _insert_one(postgres: bool, keyed: bool) -> sa.Insert:
    insert = (postgresql if postgres else sqlite).insert(tasks)
    if keyed:
        insert = insert.on_conflict_do_nothing(index_elements=[tasks.c.idempotency_key])
    return insert.returning(*tasks.c, *([_NOTIFY_MADE] if postgres else []))


INSERT_ONE_TASK = {(name, keyed): _insert_one(name == "postgresql", keyed)
                   for name in ("postgresql", "sqlite") for keyed in (False, True)}
TASK_BY_KEY = sa.select(tasks).where(tasks.c.idempotency_key == sa.bindparam("key"))


def seconds_between(
    postgres: bool, start: sa.ColumnElement[Any], end: sa.ColumnElement[Any]
) -> sa.ColumnElement[float]:
    """``end - start`` in seconds as a float, in the backend's own date arithmetic."""
    if postgres:
        return sa.cast(sa.func.extract("epoch", end - start), sa.Float)
    return (sa.func.julianday(end) - sa.func.julianday(start)) * 86400.0


def durations(postgres: bool, finished: sa.ColumnElement[Any]) -> dict[str, sa.ColumnElement[float]]:
    """The stored durations of a run that ends at ``finished`` (set in the UPDATE that ends it), so metrics read
    them from an index instead of computing them row by row."""
    return {
        "run_seconds": seconds_between(postgres, tasks.c.started_at, finished),
        "queue_seconds": seconds_between(postgres, tasks.c.created_at, tasks.c.started_at),
    }


# A task is held while the whole pipeline or its type is paused: part of every claim's own statement, so a claim
# reads the pauses in its own transaction (a pause committed before the claim began is always seen).
_NOT_PAUSED = ~sa.exists().where(pauses.c.scope.in_([sa.literal(PAUSE_ALL), tasks.c.task_type]))


# An automatic retry waits out its backoff: no claim before its not_before (``b_now`` is the claim's moment).
_DUE = sa.or_(tasks.c.not_before.is_(None), tasks.c.not_before <= sa.bindparam("b_now", type_=UTCDateTime))


# The day's cost cap (store/costs.py), in every claim's own statement so it is read in the claim's transaction on
# every replica: an agent task (no command) is claimable only while the cap in force (the operator's, else
# ``b_day_cap``, COHERENCE_COST_CAP_DAY_USD; 0 = none) is above today's spend (runs finished since ``b_day_start``,
# plus what runs going on reported). Uncorrelated subqueries: evaluated once per statement, and the spend only when a
# cap is set; a task with a command never looks at them. No round trip is added to a claim.
_spending = tasks.alias("spending")  # its own name: inside a claim, ``tasks`` is the row being claimed
# What the runs going on have reported costing so far (their heartbeats); the spend read (store/costs.py) shows it too.
RUNNING_COST = sa.select(sa.func.coalesce(sa.func.sum(_spending.c.running_cost_usd), 0.0)).where(
    _spending.c.status == RUNNING, _spending.c.running_cost_usd.is_not(None))
_DAY_CAP = sa.func.coalesce(sa.select(cost_caps.c.usd).where(cost_caps.c.cap == "day").scalar_subquery(),
                            sa.bindparam("b_day_cap", type_=sa.Float))
_SPENT_TODAY = (
    sa.select(sa.func.coalesce(sa.func.sum(spend.c.cost_usd), 0.0))
    .where(spend.c.at >= sa.bindparam("b_day_start", type_=UTCDateTime)).scalar_subquery()
    + RUNNING_COST.scalar_subquery()
)
_WITHIN_DAY_CAP = sa.or_(tasks.c.command.is_not(None), _DAY_CAP <= 0, _SPENT_TODAY < _DAY_CAP)


# Limits (type_policies.max_running): the types whose running tasks have reached their limit. Uncorrelated with the
# claimed row, so it runs once per statement (one count per limited type, from ix_tasks_type_status), and on an
# empty policy table it costs one look at nothing. Inside the claim's own statement it counts what that statement's
# snapshot holds: atomic on SQLite (the claim holds the write lock), on PostgreSQL once the claim has locked the
# limited types' policy rows in an earlier statement (limits_statement), so the count sees every claim committed before.
_running = tasks.alias("running")
_FULL_TYPES = sa.select(type_policies.c.task_type).where(
    type_policies.c.max_running.is_not(None),
    type_policies.c.max_running <= sa.select(sa.func.count()).where(
        _running.c.status == RUNNING, _running.c.task_type == type_policies.c.task_type
    ).scalar_subquery(),
)
_UNDER_LIMIT = tasks.c.task_type.not_in(_FULL_TYPES)
_HAS_LIMIT = sa.exists().where(type_policies.c.task_type == tasks.c.task_type, type_policies.c.max_running.is_not(None))


def _limits(typed: bool) -> sa.Select[tuple[str]]:
    """The limited types a claim (of the types bound as ``b_types`` when ``typed``) could hand out."""
    pick = sa.select(type_policies.c.task_type).where(type_policies.c.max_running.is_not(None))
    if typed:
        pick = pick.where(type_policies.c.task_type.in_(sa.bindparam("b_types", expanding=True)))
    return pick.order_by(type_policies.c.task_type)


@cache
def limits_statement(typed: bool, lock: bool) -> sa.Select[tuple[str]]:
    """The limited types among a claim's; with ``lock`` (PostgreSQL) their policy rows are locked until the claim
    commits, in a statement before the claim's own, so claims of a limited type take turns and each one's count
    (a fresh snapshot per statement under READ COMMITTED) sees the claims committed before it. Locked in type order,
    so two claims never wait on each other crosswise."""
    return _limits(typed).with_for_update() if lock else _limits(typed).limit(1)


def _pending(typed: bool, limited: bool = True) -> sa.Select[tuple[int]]:
    """Ids of claimable tasks (of the types bound as ``b_types`` when ``typed``): pending, due, not paused, within
    the day's cost cap (an agent task) and, when ``limited``, of a type below its limit."""
    pick = sa.select(tasks.c.id).where(tasks.c.status == PENDING, _DUE, _NOT_PAUSED, _WITHIN_DAY_CAP)
    if limited:
        pick = pick.where(_UNDER_LIMIT)
    if typed:
        pick = pick.where(tasks.c.task_type.in_(sa.bindparam("b_types", expanding=True)))
    return pick


@cache
def claimable_statement(typed: bool) -> sa.Select[tuple[int]]:
    """Is any task claimable? A read, so a claim that would find nothing opens no write transaction (tasks of a type
    at its limit are not claimable: a runner that can take nothing else waits for a slot without writing)."""
    return _pending(typed).limit(1)


# How a claim statement treats limits (store/limited_claims.py): FILTERED leaves out the types at their limit (the
# count in its own statement); UNLIMITED_ONLY picks as if there were no limits and claims only what it picked of types
# without one (a limited pick is left for a claim that takes the limits' lock first).
FILTERED, UNLIMITED_ONLY = "filtered", "unlimited_only"
_UNLIMITED = ~_HAS_LIMIT


@cache
def claim_statement(typed: bool, postgres: bool, several: bool, replayable: bool, limits: str) -> sa.Update:
    """Built once: statement construction costs more than SQLite's execution of it.

    ``several`` picks up to ``b_limit`` tasks (``id IN``); one task keeps ``id =``, which both planners like best.
    ``replayable`` claims only if this request id got nothing yet, in the same statement (a retried claim then
    updates nothing and reads what it got), so a first claim costs no separate look-up. ``limits``: FILTERED or
    UNLIMITED_ONLY (above)."""
    pick = _pending(typed, limits == FILTERED).order_by(tasks.c.priority.desc(), tasks.c.id.asc())
    pick = pick.limit(sa.bindparam("b_limit", type_=sa.Integer)) if several else pick.limit(1)
    if postgres:
        pick = pick.with_for_update(skip_locked=True)
    chosen: sa.ColumnElement[bool]
    if several:
        # A materialized CTE runs the pick once: as a plain IN subquery PostgreSQL may run it again, and with
        # SKIP LOCKED a second run skips the rows the first locked and picks others (more than the limit).
        picked = pick.cte("picked").prefix_with("MATERIALIZED") if postgres else pick.subquery()
        chosen = tasks.c.id.in_(sa.select(picked.c.id))
    else:
        chosen = tasks.c.id == pick.scalar_subquery()
    condition: list[sa.ColumnElement[bool]] = [chosen, tasks.c.status == PENDING]
    if limits == UNLIMITED_ONLY:
        condition.append(_UNLIMITED)
    if replayable:
        earlier = tasks.alias("earlier")
        condition.append(~sa.exists().where(
            earlier.c.claim_request_id == sa.bindparam("b_request"),
            earlier.c.claimed_by == sa.bindparam("b_runner"),
            earlier.c.status == RUNNING,
        ))
    return (
        tasks.update()
        .where(*condition)
        .values(
            status=RUNNING,
            claimed_by=sa.bindparam("b_runner"),
            claim_request_id=sa.bindparam("b_request"),
            claim_token=tasks.c.claim_token + 1,
            lease_expires_at=sa.bindparam("b_lease", type_=UTCDateTime),
            started_at=sa.bindparam("b_now", type_=UTCDateTime),
            finished_at=None,
            exit_code=None,
            progress_pct=None,
            current_step=None,
            last_output_at=None,  # a previous run's: the new run's first renewal says when it last printed
            run_seconds=None,
            queue_seconds=None,
            updated_at=sa.bindparam("b_now", type_=UTCDateTime),
        )
        .returning(*tasks.c)
    )


CLAIMED_BY_REQUEST = (
    sa.select(tasks)
    .where(
        tasks.c.claim_request_id == sa.bindparam("b_request"),
        tasks.c.claimed_by == sa.bindparam("b_runner"),
        tasks.c.status == RUNNING,
    )
    .order_by(tasks.c.priority.desc(), tasks.c.id.asc())
)


LIMITED = "limited"


@cache
def claim_one_statement(typed: bool, replayable: bool) -> sa.Select[Any]:
    """PostgreSQL, one task, in one statement that commits by itself (issue 23: no BEGIN, no COMMIT): the claim of a
    type without a limit (UNLIMITED_ONLY), with ``replayable`` what this request id claimed before (a retry), and in
    the column ``limited`` whether a type the claim could take has a limit. One row at least: its task columns are
    NULL when nothing was claimed; then, if ``limited``, the claim is made again in a transaction that takes the
    limits' lock (store/limited_claims.py)."""
    claimed = claim_statement(typed, True, False, replayable, UNLIMITED_ONLY).cte("claimed")
    got: sa.FromClause = claimed
    if replayable:  # the statement sees the store as before its UPDATE: an earlier claim's task, never this one's
        got = sa.union_all(sa.select(claimed), CLAIMED_BY_REQUEST.order_by(None)).subquery("got")
    flag = sa.select(sa.exists(_limits(typed).order_by(None)).label(LIMITED)).subquery("flag")
    return sa.select(flag.c[LIMITED], *got.c).select_from(flag.outerjoin(got, sa.true()))


def claim_order(task: dict[str, Any]) -> tuple[int, int]:
    """The claim's own order (most urgent first): RETURNING gives rows in no promised order."""
    return -task["priority"], task["id"]


# Returned by a move out of running: whether the task's type has a limit, so the move wakes the claims waiting for
# a slot of it (a move of an unlimited type wakes nobody, as before).
FREES_SLOT = "frees_limited_slot"
_FREES_SLOT = _HAS_LIMIT.label(FREES_SLOT)


@cache
def update_statement(
    needed: str, fenced: bool, keys: tuple[str, ...], count_attempt: bool, postgres: bool
) -> sa.Update:
    """``UPDATE tasks SET <keys> WHERE id = ? AND status = <needed> [AND claim_token = ?]``, built once per shape.

    ``count_attempt`` adds one to ``attempts`` in the same statement (an attempt that ended in failure); a run that
    ends (``finished_at`` set) stores its durations in it too."""
    condition = [tasks.c.id == sa.bindparam("b_id"), tasks.c.status == needed]
    if fenced:
        condition.append(tasks.c.claim_token == sa.bindparam("b_token"))
    values: dict[str, Any] = {key: sa.bindparam(f"v_{key}", type_=tasks.c[key].type) for key in keys}
    if count_attempt:
        values["attempts"] = tasks.c.attempts + 1
    if "finished_at" in keys and "run_seconds" not in keys:
        values.update(durations(postgres, values["finished_at"]))
    returned: list[sa.ColumnElement[Any]] = list(tasks.c)
    if needed == RUNNING and "status" in keys:
        returned.append(_FREES_SLOT)
    return tasks.update().where(*condition).values(values).returning(*returned)


def same_create(key: str, earlier: dict[str, Any], values: dict[str, Any], where: str) -> None:
    """A reused idempotency key must name the same create: another direction, type or command is a client bug."""
    if any(earlier[f] != values[f] for f in _IDEMPOTENT_FIELDS):
        raise Conflict(
            f"idempotency key {key!r} was already used by {where} with a different direction, type or command; "
            "use a new key for a new task",
            earlier.get("status"),
        )


# A failed task whose attempts are spent: nothing retries it but an operator (the "out of attempts" view).
SPENT = tasks.c.attempts >= tasks.c.max_attempts
OUT_OF_ATTEMPTS = sa.and_(tasks.c.status == FAILED, SPENT)


def count_capped(matches: sa.Select[Any]) -> sa.Select[Any]:
    """How many rows ``matches`` gives, counted up to COUNT_CAP + 1 (a search's total: see store/search.py)."""
    return sa.select(sa.func.count()).select_from(matches.limit(COUNT_CAP + 1).subquery())


def sort_order(column: str, descending: bool) -> list[sa.UnaryExpression[Any]]:
    """ORDER BY for a sort, in the order of the index that serves it. Priority breaks ties the claim's way (equal
    priorities oldest first when the most urgent lead), so its index is the claim's order read either way."""
    if column == "id":
        return [tasks.c.id.desc() if descending else tasks.c.id.asc()]
    first = tasks.c[column].desc() if descending else tasks.c[column].asc()
    tie_down = descending != (column == "priority")
    return [first, tasks.c.id.desc() if tie_down else tasks.c.id.asc()]


# Inside TaskStore, ``list`` names its method: these spell the builtin's types for its signatures.
Rows = list[dict[str, Any]]
Outcomes = list[tuple[dict[str, Any], bool]]


@dataclass
class ReapResult:
    """Expired leases handled by one reaper pass."""

    reclaimed: int = 0
    failed: int = 0
    cancelled: int = 0  # runs whose cancel was requested and whose runner went silent: settled as cancelled
    waited: float | None = None  # set when the pass held back: seconds it waited for the store's write lock


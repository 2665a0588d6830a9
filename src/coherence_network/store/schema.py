"""SQLAlchemy Core tables. Changes here need an Alembic revision in migrations/versions."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

from coherence_network.contract import SETTLED_STATUSES, Ecosystem, TaskStatus, TaskType

metadata = sa.MetaData()


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite keeps naive UTC text underneath)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use timezone-aware UTC")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def _one_of(column: str, values: type[TaskStatus | TaskType]) -> str:
    """A CHECK expression holding ``column`` to the contract's values (revision 0006 has the same text, frozen)."""
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


tasks = sa.Table(
    "tasks",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("direction", sa.Text, nullable=False),
    sa.Column("task_type", sa.String(16), nullable=False),
    sa.Column("status", sa.String(16), nullable=False, server_default=TaskStatus.PENDING.value),
    sa.Column("command", sa.Text, nullable=True),
    sa.Column("priority", sa.Integer, nullable=False, server_default="0"),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("max_attempts", sa.Integer, nullable=False, server_default="3"),
    sa.Column("claim_token", sa.Integer, nullable=False, server_default="0"),
    sa.Column("claimed_by", sa.String(200), nullable=True),
    sa.Column("lease_expires_at", UTCDateTime, nullable=True),
    sa.Column("timeout_seconds", sa.Float, nullable=True),
    sa.Column("progress_pct", sa.Float, nullable=True),
    sa.Column("current_step", sa.Text, nullable=True),
    sa.Column("output", sa.Text, nullable=True),
    sa.Column("exit_code", sa.Integer, nullable=True),
    sa.Column("decision_prompt", sa.Text, nullable=True),
    sa.Column("decision", sa.Text, nullable=True),
    sa.Column("decided_by", sa.String(200), nullable=True),
    sa.Column("decided_at", UTCDateTime, nullable=True),
    sa.Column("context", sa.JSON, nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=True),
    sa.Column("finished_at", UTCDateTime, nullable=True),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    # A create's Idempotency-Key: the same key returns the first task (unique; tasks without a key are NULL).
    sa.Column("idempotency_key", sa.String(200), nullable=True),
    # The request id of the claim that got this task: a retried claim finds it instead of taking a second task.
    sa.Column("claim_request_id", sa.String(100), nullable=True),
    # Set by the UPDATE that ends a run (completed or failed): finished_at - started_at and started_at -
    # created_at, so the metrics read durations from an index instead of computing them row by row.
    sa.Column("run_seconds", sa.Float, nullable=True),
    sa.Column("queue_seconds", sa.Float, nullable=True),
    # Steering (revision 0012): why the last run failed, when an automatic retry may be claimed, and a cancel.
    sa.Column("error_category", sa.String(32), nullable=True),
    sa.Column("error_summary", sa.Text, nullable=True),
    sa.Column("not_before", UTCDateTime, nullable=True),
    sa.Column("cancel_requested_at", UTCDateTime, nullable=True),
    sa.Column("cancelled_by", sa.String(200), nullable=True),
    sa.Column("cancel_reason", sa.Text, nullable=True),
    # Real agents (revision 0014): the item a phase belongs to, what its agent reported using, its last output,
    # and the evidence it left (branch, commit, diffstat, verdict, merge, push).
    sa.Column("item", sa.String(200), nullable=True),
    sa.Column("agent", sa.String(32), nullable=True),
    sa.Column("model", sa.String(200), nullable=True),
    sa.Column("tokens_in", sa.BigInteger, nullable=True),
    sa.Column("tokens_out", sa.BigInteger, nullable=True),
    sa.Column("cost_usd", sa.Float, nullable=True),
    sa.Column("last_output_at", UTCDateTime, nullable=True),
    sa.Column("evidence", sa.JSON, nullable=True),
    sa.Column("running_cost_usd", sa.Float, nullable=True),  # revision 0015: its run's cost so far (heartbeats)
    sa.CheckConstraint(_one_of("status", TaskStatus), name="ck_tasks_status"),
    sa.CheckConstraint(_one_of("task_type", TaskType), name="ck_tasks_task_type"),
    sa.Index("ix_tasks_claim_order", "status", sa.desc("priority"), "id"),  # the claim's ORDER BY, no sort
    sa.Index("ix_tasks_status_id", "status", "id"),  # a page of one status, newest first, no sort
    sa.Index("ix_tasks_idempotency_key", "idempotency_key", unique=True),
    # Partial (revision 0019): only the rows a read of the index can ask for, so other writes skip it.
    sa.Index("ix_tasks_claim_request_id", "claim_request_id", sqlite_where=sa.text("claim_request_id IS NOT NULL"),
             postgresql_where=sa.text("claim_request_id IS NOT NULL")),
    # Sorted pages (contract.SORT_COLUMNS): the first page of a sort walks one of these, id breaking ties.
    sa.Index("ix_tasks_priority_id", sa.desc("priority"), "id"),
    sa.Index("ix_tasks_type_id", "task_type", "id"),
    sa.Index("ix_tasks_created_id", "created_at", "id"),
    sa.Index("ix_tasks_updated_id", "updated_at", "id"),
    sa.Index("ix_tasks_attempts_id", "attempts", "id"),
    # An item's tasks in order (revision 0014); only tasks of a backlog item are in it.
    sa.Index("ix_tasks_item_id", "item", "id", sqlite_where=sa.text("item IS NOT NULL"),
             postgresql_where=sa.text("item IS NOT NULL")),
    # When the next automatic retry is due (revision 0013): a waiting claim reads the earliest in one index seek (only
    # tasks waiting out a backoff are in it, revision 0019).
    sa.Index("ix_tasks_status_not_before", "status", "not_before", sqlite_where=sa.text("not_before IS NOT NULL"),
             postgresql_where=sa.text("not_before IS NOT NULL")),
    # pipeline-status's pending-by-type (count and oldest) from the index alone (revision 0016), and every count of
    # one status by type (running tasks against their limits, failed ones out of attempts).
    sa.Index("ix_tasks_status_type_created", "status", "task_type", "created_at"),
)
# Free-text search of tasks (store/search.py), made by revision 0009 in the backend's own SQL and so outside this
# metadata: on SQLite the FTS5 table, its shadow tables and triggers; on PostgreSQL task_search (a tsvector per
# task under a GIN index), its trigger function and triggers.
SEARCH_TABLES = frozenset({"task_search", "tasks_fts",
                           *(f"tasks_fts_{part}" for part in ("data", "idx", "docsize", "config"))})

def _registry_table(name: str, key: sa.Column[str]) -> sa.Table:
    """A "who is alive" registry: one row per ``key``, with where it runs and when it was first and last seen."""
    return sa.Table(
        name,
        metadata,
        key,
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("version", sa.String(100), nullable=False),
        sa.Column("info", sa.JSON, nullable=True),
        sa.Column("first_seen", UTCDateTime, nullable=False),
        sa.Column("last_seen", UTCDateTime, nullable=False),
    )


runners = _registry_table("runners", sa.Column("id", sa.String(200), primary_key=True))
# One row per component, e.g. "project_manager".
components = _registry_table("components", sa.Column("name", sa.String(100), primary_key=True))

# Covers the time-window statistics (store/stats.py): a window of finished tasks is read from the index alone (only
# finished tasks are in it, revision 0019).
FINISHED_WINDOW_INDEX = sa.Index(
    "ix_tasks_finished_durations",
    tasks.c.finished_at, tasks.c.task_type, tasks.c.status, tasks.c.run_seconds, tasks.c.queue_seconds,
    sqlite_where=sa.text("finished_at IS NOT NULL"), postgresql_where=sa.text("finished_at IS NOT NULL"),
)

# The hourly rollup of settled tasks (revision 0016; store/rollup.py): one row per (UTC hour, task type), the hour
# counted in whole hours since 1970-01-01 UTC, so metrics and charts read a few hundred rows, never the tasks. Kept by
# triggers on tasks (revision 0018) as a task settles (and taken back by a retry), in the move's transaction.
# ``completed``, ``failed`` and ``cancelled`` count the tasks that settled so in the hour; ``run_NN`` and ``queue_NN``
# count their run times and queue waits per log-spaced bucket (DURATION_BOUNDS: bucket 0 holds durations under 0.1 s,
# bucket k those in [bound k-1, bound k), the last one everything from the last bound up), so percentiles are estimated
# from buckets that merge by adding.
DURATION_BOUNDS = tuple(0.1 * 2 ** (k / 2) for k in range(45))  # seconds: 0.1 s to 4.9 days, a factor sqrt(2) apart
DURATION_BUCKETS = len(DURATION_BOUNDS) + 1
HOUR_OUTCOMES = tuple(sorted(status.value for status in SETTLED_STATUSES))  # one column each
DURATIONS = ("run", "queue")  # tasks.run_seconds and tasks.queue_seconds


def bucket_column(duration: str, k: int) -> str:
    """The column of bucket ``k`` of ``duration`` (run or queue)."""
    return f"{duration}_{k:02d}"


task_hours = sa.Table(
    "task_hours",
    metadata,
    sa.Column("hour", sa.Integer, primary_key=True),
    sa.Column("task_type", sa.String(16), primary_key=True),
    # Revision 0018: an hour and type in up to 8 rows that reads sum, so that concurrent finishes on PostgreSQL do not
    # queue for one row's lock (each connection writes its own: its server process's pid modulo 8; SQLite: 0).
    sa.Column("shard", sa.SmallInteger, primary_key=True, server_default="0"),
    *(sa.Column(name, sa.Integer, nullable=False, server_default="0") for name in HOUR_OUTCOMES),
    *(sa.Column(bucket_column(d, k), sa.Integer, nullable=False, server_default="0")
      for d in DURATIONS for k in range(DURATION_BUCKETS)),
)

# Issues the monitor has open (one row per rule while open; resolved_at set when it clears) and fatal issues the
# supervisor reported (cleared_at set by `coherence fatal --clear`): readable from any API replica.
monitor_issues = sa.Table(
    "monitor_issues",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("rule", sa.String(64), nullable=False),
    sa.Column("severity", sa.String(16), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("action", sa.Text, nullable=False),
    sa.Column("runbook", sa.String(200), nullable=False),
    sa.Column("detail", sa.JSON, nullable=True),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("first_seen", UTCDateTime, nullable=False),
    sa.Column("last_seen", UTCDateTime, nullable=False),
    sa.Column("resolved_at", UTCDateTime, nullable=True),
    sa.Index("ix_monitor_issues_open", "resolved_at", "rule"),
    # the open set is keyed by (host, rule): one open row each (revision 0010)
    sa.Index("ix_monitor_issues_open_host_rule", "host", "rule", unique=True,
             sqlite_where=sa.text("resolved_at IS NULL"), postgresql_where=sa.text("resolved_at IS NULL")),
)
fatal_issues = sa.Table(
    "fatal_issues",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("component", sa.String(100), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Column("recovery_tried", sa.Text, nullable=False),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("cleared_at", UTCDateTime, nullable=True),
    sa.Index("ix_fatal_issues_open", "cleared_at", "at"),
)

# Paused work (revision 0011): one row per paused scope, "all" (the whole pipeline) or a task type. The claim hands
# out nothing of a paused scope; resuming deletes the row. Kept in the store so a restart of the API keeps it.
pauses = sa.Table(
    "pauses",
    metadata,
    sa.Column("scope", sa.String(16), primary_key=True),
    sa.Column("since", UTCDateTime, nullable=False),
    sa.Column("paused_by", sa.String(200), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
)

# What each task type may do (revision 0012): a row per type an operator set something for; a NULL column takes the
# setting's default. max_running: tasks of the type running at once across all runners (the claim enforces it);
# retry_delay_seconds / retry_max_delay_seconds: the automatic retry's first and largest backoff;
# breaker_failures: failures in a row that pause the type (the circuit breaker).
type_policies = sa.Table(
    "type_policies",
    metadata,
    sa.Column("task_type", sa.String(16), primary_key=True),
    sa.Column("max_running", sa.Integer, nullable=True),
    sa.Column("retry_delay_seconds", sa.Float, nullable=True),
    sa.Column("retry_max_delay_seconds", sa.Float, nullable=True),
    sa.Column("breaker_failures", sa.Integer, nullable=True),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("updated_by", sa.String(200), nullable=False),
)

# The circuit breaker's count (revision 0013): each task type's failed runs in a row since its last success or an
# operator's resume of it; the failure that reaches the type's breaker_failures pauses the type.
type_failures = sa.Table(
    "type_failures",
    metadata,
    sa.Column("task_type", sa.String(16), primary_key=True),
    sa.Column("failures", sa.Integer, nullable=False),
    sa.Column("last_failed_at", UTCDateTime, nullable=False),
)

# The audit trail (revision 0012): one row per operator action, appended in the action's own transaction and never
# updated. task_id is not a foreign key: the trail outlives the tasks it names (its own retention, longer).
audit = sa.Table(
    "audit",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("channel", sa.String(16), nullable=False),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("task_id", sa.Integer, nullable=True),
    sa.Column("target", sa.String(200), nullable=True),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("status_before", sa.String(16), nullable=True),
    sa.Column("status_after", sa.String(16), nullable=True),
    sa.Column("detail", sa.JSON, nullable=True),
    sa.Index("ix_audit_at", "at"),
    sa.Index("ix_audit_task", "task_id", "id"),
    sa.Index("ix_audit_action", "action", "id"),
)

# Costs and caps (revision 0015). cost_caps: the operator's caps (task, item, day; US dollars, 0 = none), each
# overriding its setting's default (COHERENCE_COST_CAP_<CAP>_USD). spend: one row per finished run that reported
# usage, appended by its finish (the day cap's sum reads ix_spend_at; an item's, ix_spend_item).
cost_caps = sa.Table(
    "cost_caps",
    metadata,
    sa.Column("cap", sa.String(8), primary_key=True),
    sa.Column("usd", sa.Float, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("updated_by", sa.String(200), nullable=False),
)
spend = sa.Table(
    "spend",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("task_id", sa.Integer, nullable=False),
    sa.Column("item", sa.String(200), nullable=True),
    sa.Column("agent", sa.String(32), nullable=True),
    sa.Column("tokens_in", sa.BigInteger, nullable=True),
    sa.Column("tokens_out", sa.BigInteger, nullable=True),
    sa.Column("cost_usd", sa.Float, nullable=True),
    sa.Index("ix_spend_at", "at"),
    sa.Index("ix_spend_item", "item", sqlite_where=sa.text("item IS NOT NULL"),
             postgresql_where=sa.text("item IS NOT NULL")),
)

# --- dependency graph (indexers) -----------------------------------------------------------------------------
ECOSYSTEMS = tuple(Ecosystem)
PROJECT_STATUSES = ("ok", "missing", "failed")  # missing: the registry said 404; failed: error kept in `error`
DEPENDENCY_KINDS = ("runtime", "optional", "dev")

# One row per package; (ecosystem, name) is unique, so indexing again updates the row instead of adding one.
projects = sa.Table(
    "projects",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("ecosystem", sa.String(16), nullable=False),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("version", sa.String(255), nullable=True),
    sa.Column("description", sa.Text, nullable=True),
    sa.Column("license", sa.String(255), nullable=True),
    sa.Column("homepage", sa.Text, nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("indexed_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("ecosystem", "name", name="uq_projects_ecosystem_name"),
    sa.Index("ix_projects_ecosystem_status", "ecosystem", "status"),
)
# Edges of each project's latest version; the target is a name (it may not be indexed yet).
dependencies = sa.Table(
    "dependencies",
    metadata,
    sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    sa.Column("to_ecosystem", sa.String(16), nullable=False),
    sa.Column("to_name", sa.String(255), nullable=False),
    sa.Column("requirement", sa.Text, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.PrimaryKeyConstraint("project_id", "to_ecosystem", "to_name", "kind", name="pk_dependencies"),
    sa.Index("ix_dependencies_target", "to_ecosystem", "to_name"),
)
# The breadth-first crawl's queue, kept in the store so an interrupted run resumes where it stopped.
index_frontier = sa.Table(
    "index_frontier",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("ecosystem", sa.String(16), nullable=False),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("depth", sa.Integer, nullable=False),
    sa.Column("state", sa.String(8), nullable=False),  # queued | done
    sa.UniqueConstraint("ecosystem", "name", name="uq_index_frontier_ecosystem_name"),
    sa.Index("ix_index_frontier_queue", "ecosystem", "state", "depth", "seq"),
)

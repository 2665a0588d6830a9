"""GraphStore: the dependency graph (projects, edges) and the indexers' crawl frontier, on SQLite or PostgreSQL.

Writes come in batches, one transaction each, and every one is an upsert keyed by a unique constraint, so indexing
a package again updates its row and replaces its edges instead of duplicating them. Each statement touches only
the rows of the batch (through indexes), so the cost of a batch does not grow with the graph.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from coherence_network.clock import utcnow
from coherence_network.contract import ProjectStatus
from coherence_network.store.schema import dependencies, index_frontier, projects

QUEUED, DONE = "queued", "done"


@dataclass(frozen=True)
class Dependency:
    """One edge of a project's latest version: target name (same ecosystem), requirement text and kind."""

    name: str
    requirement: str
    kind: str  # runtime | optional | dev


@dataclass
class PackageRecord:
    """What one fetch found out about a package; ``status`` is ok, missing or failed (with ``error``)."""

    name: str
    status: str
    version: str | None = None
    description: str | None = None
    license: str | None = None
    homepage: str | None = None
    error: str | None = None
    dependencies: list[Dependency] = field(default_factory=list)


@dataclass(frozen=True)
class FrontierEntry:
    """A queued package with what the store already knows of it (None when never indexed)."""

    name: str
    depth: int
    status: str | None
    indexed_at: datetime | None


def _project(row: sa.Row[Any]) -> dict[str, Any]:
    return {key: value for key, value in row._mapping.items() if key != "id"}


class GraphStore:
    """Graph reads for the API and batched, idempotent writes for the indexers."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert

    def dispose(self) -> None:
        """Close the pool's connections (an indexer that is done)."""
        self._engine.dispose()

    # --- frontier ------------------------------------------------------------------------------------------
    def enqueue_seeds(self, ecosystem: str, names: Iterable[str]) -> None:
        """Queue seeds at depth 0, again if a previous run finished them (a fresh one is then only expanded)."""
        rows = [{"ecosystem": ecosystem, "name": name, "depth": 0, "state": QUEUED} for name in dict.fromkeys(names)]
        if not rows:
            return
        stmt = self._insert(index_frontier)
        stmt = stmt.on_conflict_do_update(
            index_elements=["ecosystem", "name"], set_={"depth": 0, "state": QUEUED}
        )
        with self._engine.begin() as conn:
            conn.execute(stmt, rows)

    def requeue_stale(self, ecosystem: str, older_than: datetime) -> int:
        """Queue again the finished entries whose package is older than ``older_than`` or failed last time."""
        stale = sa.select(projects.c.name).where(
            projects.c.ecosystem == ecosystem,
            sa.or_(projects.c.indexed_at < older_than, projects.c.status == ProjectStatus.FAILED),
        )
        stmt = (
            index_frontier.update()
            .where(index_frontier.c.ecosystem == ecosystem, index_frontier.c.state == DONE,
                   index_frontier.c.name.in_(stale))
            .values(state=QUEUED)
        )
        with self._engine.begin() as conn:
            return conn.execute(stmt).rowcount

    def frontier_page(
        self, ecosystem: str, limit: int, *, max_depth: int | None = None, exclude: Sequence[str] = ()
    ) -> list[FrontierEntry]:
        """The next queued entries in breadth-first order (depth, then arrival), skipping ``exclude``.

        ``exclude`` holds the entries this run already has in hand; the page is widened by its size so that they
        never crowd out new work.
        """
        query = (
            sa.select(index_frontier.c.name, index_frontier.c.depth, projects.c.status, projects.c.indexed_at)
            .select_from(
                index_frontier.outerjoin(
                    projects, sa.and_(projects.c.ecosystem == index_frontier.c.ecosystem,
                                      projects.c.name == index_frontier.c.name)
                )
            )
            .where(index_frontier.c.ecosystem == ecosystem, index_frontier.c.state == QUEUED)
            .order_by(index_frontier.c.depth, index_frontier.c.seq)
            .limit(limit + len(exclude))
        )
        if max_depth is not None:
            query = query.where(index_frontier.c.depth <= max_depth)
        skip = set(exclude)
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
        return [FrontierEntry(r.name, r.depth, r.status, r.indexed_at) for r in rows if r.name not in skip][:limit]

    def queued_count(self, ecosystem: str) -> int:
        query = sa.select(sa.func.count()).select_from(index_frontier).where(
            index_frontier.c.ecosystem == ecosystem, index_frontier.c.state == QUEUED
        )
        with self._engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    # --- batched writes ------------------------------------------------------------------------------------
    def save_batch(
        self,
        ecosystem: str,
        fetched: Sequence[tuple[PackageRecord, int]],
        skipped: Sequence[tuple[str, int]] = (),
    ) -> None:
        """Write one batch in one transaction: upsert the fetched packages (with depth), replace their edges,
        queue the packages they depend on (dev edges are not followed), and mark the batch done in the frontier.
        ``skipped`` are fresh packages not fetched again: they are expanded from their stored edges."""
        now = utcnow()
        with self._engine.begin() as conn:
            ids = self._upsert_projects(conn, ecosystem, [record for record, _ in fetched], now)
            if ids:
                conn.execute(dependencies.delete().where(dependencies.c.project_id.in_(list(ids.values()))))
            edges: list[dict[str, Any]] = []
            children: dict[str, int] = {}
            for record, depth in fetched:
                for dep in record.dependencies:
                    edges.append({"project_id": ids[record.name], "to_ecosystem": ecosystem, "to_name": dep.name,
                                  "requirement": dep.requirement, "kind": dep.kind})
                    if dep.kind != "dev":
                        children[dep.name] = min(children.get(dep.name, depth + 1), depth + 1)
            if edges:
                conn.execute(self._insert(dependencies).on_conflict_do_nothing(), edges)
            children.update(self._stored_children(conn, ecosystem, skipped, exclude=children))
            if children:
                rows = [{"ecosystem": ecosystem, "name": name, "depth": depth, "state": QUEUED}
                        for name, depth in children.items()]
                conn.execute(
                    self._insert(index_frontier).on_conflict_do_nothing(index_elements=["ecosystem", "name"]), rows
                )
            done = [record.name for record, _ in fetched] + [name for name, _ in skipped]
            if done:
                conn.execute(
                    index_frontier.update()
                    .where(index_frontier.c.ecosystem == ecosystem, index_frontier.c.name.in_(done))
                    .values(state=DONE)
                )

    def _upsert_projects(
        self, conn: Connection, ecosystem: str, records: Sequence[PackageRecord], now: datetime
    ) -> dict[str, int]:
        if not records:
            return {}
        rows = [
            {"ecosystem": ecosystem, "name": r.name, "version": r.version, "description": r.description,
             "license": r.license, "homepage": r.homepage, "status": r.status, "error": r.error, "indexed_at": now}
            for r in records
        ]
        stmt = self._insert(projects)
        updated = ("version", "description", "license", "homepage", "status", "error", "indexed_at")
        stmt = stmt.on_conflict_do_update(
            index_elements=["ecosystem", "name"], set_={key: stmt.excluded[key] for key in updated}
        )
        conn.execute(stmt, rows)
        names = [r.name for r in records]
        found = conn.execute(
            sa.select(projects.c.name, projects.c.id).where(projects.c.ecosystem == ecosystem,
                                                             projects.c.name.in_(names))
        )
        return {name: project_id for name, project_id in found}

    @staticmethod
    def _stored_children(
        conn: Connection, ecosystem: str, skipped: Sequence[tuple[str, int]], exclude: dict[str, int]
    ) -> dict[str, int]:
        """Non-dev dependency names of already indexed packages, each at its parent's depth + 1."""
        depth_of = dict(skipped)
        if not depth_of:
            return {}
        query = (
            sa.select(projects.c.name, dependencies.c.to_name)
            .join(dependencies, dependencies.c.project_id == projects.c.id)
            .where(projects.c.ecosystem == ecosystem, projects.c.name.in_(list(depth_of)),
                   dependencies.c.kind != "dev")
        )
        children: dict[str, int] = {}
        for parent, child in conn.execute(query):
            if child not in exclude:
                children[child] = min(children.get(child, depth_of[parent] + 1), depth_of[parent] + 1)
        return children

    # --- reads ---------------------------------------------------------------------------------------------
    def count(self, ecosystem: str, status: str = ProjectStatus.OK) -> int:
        query = sa.select(sa.func.count()).select_from(projects).where(
            projects.c.ecosystem == ecosystem, projects.c.status == status
        )
        with self._engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def project(self, ecosystem: str, name: str) -> dict[str, Any] | None:
        """One project with its dependencies (runtime first), or None when it was never indexed."""
        with self._engine.connect() as conn:
            row = conn.execute(
                sa.select(projects).where(projects.c.ecosystem == ecosystem, projects.c.name == name)
            ).first()
            if row is None:
                return None
            edges = conn.execute(
                sa.select(dependencies.c.to_ecosystem, dependencies.c.to_name, dependencies.c.requirement,
                          dependencies.c.kind)
                .where(dependencies.c.project_id == row.id)
                .order_by(dependencies.c.kind.desc(), dependencies.c.to_name)
            ).all()
        result = _project(row)
        result["dependencies"] = [
            {"ecosystem": e.to_ecosystem, "name": e.to_name, "requirement": e.requirement, "kind": e.kind}
            for e in edges
        ]
        return result

    def dependents(self, ecosystem: str, name: str, *, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
        """Indexed projects whose latest version depends on ``name``, with the real total."""
        where = (dependencies.c.to_ecosystem == ecosystem, dependencies.c.to_name == name)
        joined = dependencies.join(projects, projects.c.id == dependencies.c.project_id)
        with self._engine.connect() as conn:
            total = conn.execute(sa.select(sa.func.count()).select_from(dependencies).where(*where)).scalar_one()
            rows = conn.execute(
                sa.select(projects.c.ecosystem, projects.c.name, projects.c.version, dependencies.c.requirement,
                          dependencies.c.kind)
                .select_from(joined).where(*where)
                .order_by(projects.c.name, dependencies.c.kind).limit(limit).offset(offset)
            ).all()
        return [dict(r._mapping) for r in rows], int(total)

    def search(
        self, *, q: str = "", ecosystem: str | None = None, limit: int, offset: int
    ) -> tuple[list[dict[str, Any]], int]:
        """Projects whose name contains ``q`` (case-insensitive), ordered by name, with the real total."""
        where = []
        if ecosystem:
            where.append(projects.c.ecosystem == ecosystem)
        if q:
            where.append(sa.func.lower(projects.c.name).contains(q.lower(), autoescape=True))
        with self._engine.connect() as conn:
            total = conn.execute(sa.select(sa.func.count()).select_from(projects).where(*where)).scalar_one()
            rows = conn.execute(
                sa.select(projects).where(*where)
                .order_by(projects.c.name, projects.c.ecosystem).limit(limit).offset(offset)
            ).all()
        return [_project(r) for r in rows], int(total)

    def stats(self, ecosystems: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
        """Per ecosystem (each of ``ecosystems`` even when empty, and any other stored): projects by status,
        dependency edges, and when a package was last indexed."""
        with self._engine.connect() as conn:
            by_status = conn.execute(
                sa.select(projects.c.ecosystem, projects.c.status, sa.func.count(), sa.func.max(projects.c.indexed_at))
                .group_by(projects.c.ecosystem, projects.c.status)
            ).all()
            edges = conn.execute(
                sa.select(dependencies.c.to_ecosystem, sa.func.count()).group_by(dependencies.c.to_ecosystem)
            ).all()
        names = [*ecosystems, *(eco for eco, *_ in by_status), *(eco for eco, _ in edges)]
        result: dict[str, dict[str, Any]] = {
            eco: {"projects": 0, "by_status": {}, "edges": 0, "last_indexed_at": None} for eco in names
        }
        for eco, status, count, last in by_status:
            entry = result[eco]
            entry["projects"] += count
            entry["by_status"][status] = count
            if last is not None and (entry["last_indexed_at"] is None or last > entry["last_indexed_at"]):
                entry["last_indexed_at"] = last
        for eco, count in edges:
            result[eco]["edges"] = count
        return result

"""Read API over the dependency graph the indexers build: projects, their dependencies and dependents, stats."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.concurrency import run_in_threadpool

from coherence_network.api.models import COMMON_ERRORS, Offset, responses
from coherence_network.contract import Ecosystem
from coherence_network.indexer.pypi import normalize as pypi_name
from coherence_network.request_bodies import Text
from coherence_network.store.graph import GraphStore

router = APIRouter(prefix="/api", tags=["projects"], responses=COMMON_ERRORS)
# npm allows 214 characters; the stored name is at most 255
ProjectName = Annotated[Text, Path(min_length=1, max_length=214, description="Package name, e.g. @scope/name")]


def _graph(request: Request) -> GraphStore:
    return request.app.state.graph


def _key(ecosystem: str, name: str) -> str:
    """The stored name: PEP 503 for PyPI (so ``Django`` finds ``django``), as given for npm."""
    return (pypi_name(name) or name) if ecosystem == Ecosystem.PYPI else name


# Declared before the project route: both match ``/npm/@scope/name/dependents``, this one must win.
@router.get("/projects/{ecosystem}/{name:path}/dependents", responses=responses(404))
async def get_dependents(
    ecosystem: Ecosystem,
    name: ProjectName,
    request: Request,
    limit: int = Query(50, ge=1, le=500),
    offset: Offset = 0,
) -> dict[str, Any]:
    """Indexed projects whose latest version depends on this one (real total; 404 when it was never indexed)."""
    if ecosystem == Ecosystem.NPM and name.startswith("@") and "/" not in name:
        return await get_project(ecosystem, f"{name}/dependents", request)  # the package "@scope/dependents"
    graph, key = _graph(request), _key(ecosystem, name)
    if await run_in_threadpool(graph.project, ecosystem, key) is None:
        raise HTTPException(404, f"{ecosystem} project {name!r} is not indexed")
    items, total = await run_in_threadpool(graph.dependents, ecosystem, key, limit=limit, offset=offset)
    return {"ecosystem": ecosystem, "name": key, "total": total, "limit": limit, "offset": offset, "items": items}


@router.get("/projects/{ecosystem}/{name:path}", responses=responses(404))
async def get_project(ecosystem: Ecosystem, name: ProjectName, request: Request) -> dict[str, Any]:
    """One project with its dependencies; 404 when it was never indexed."""
    found = await run_in_threadpool(_graph(request).project, ecosystem, _key(ecosystem, name))
    if found is None:
        raise HTTPException(404, f"{ecosystem} project {name!r} is not indexed")
    return found


@router.get("/projects")
async def list_projects(
    request: Request,
    q: Annotated[Text, Query(max_length=214, description="Part of the name, case-insensitive")] = "",
    ecosystem: Ecosystem | None = None,
    limit: int = Query(50, ge=1, le=500),
    offset: Offset = 0,
) -> dict[str, Any]:
    """Projects by name, with the real total of matches."""
    items, total = await run_in_threadpool(
        _graph(request).search, q=q.strip(), ecosystem=ecosystem, limit=limit, offset=offset
    )
    return {"total": total, "limit": limit, "offset": offset, "items": items}


@router.get("/graph/stats")
async def graph_stats(request: Request) -> dict[str, Any]:
    """Projects (by status) and dependency edges per ecosystem, and when each was last indexed."""
    stored = await run_in_threadpool(_graph(request).stats, tuple(Ecosystem))
    ecosystems = {eco.value: stored[eco] for eco in Ecosystem}
    return {
        "ecosystems": ecosystems,
        "projects": sum(e["projects"] for e in ecosystems.values()),
        "edges": sum(e["edges"] for e in ecosystems.values()),
    }

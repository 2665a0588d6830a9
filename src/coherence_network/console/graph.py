"""The dependency graph's pages: searching indexed projects, and one project with its dependents."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from coherence_network.api.routes_projects import _key as stored_project_name
from coherence_network.console.pages import PAGE_SIZE, error_page, page_links, render, visit_of
from coherence_network.contract import Ecosystem
from coherence_network.request_bodies import storable_text

router = APIRouter(include_in_schema=False)
ECOSYSTEMS = tuple(Ecosystem)
_UNSTORABLE_MESSAGE = "Names hold no NUL characters or lone surrogates: no project can have one."


@router.get("/graph")
def graph_page(request: Request, q: str = "", ecosystem: str = "", offset: int = 0) -> HTMLResponse:
    visit = visit_of(request)
    if ecosystem and ecosystem not in ECOSYSTEMS:
        return error_page(request, 400, "Unknown ecosystem", f"ecosystem must be one of {', '.join(ECOSYSTEMS)}",
                          visit)
    if storable_text(q)[1]:
        return error_page(request, 400, "Bad search", _UNSTORABLE_MESSAGE, visit)
    graph = request.app.state.graph
    q, offset = q.strip()[:214], min(max(offset, 0), 2**31 - 1)
    items, total = graph.search(q=q, ecosystem=ecosystem or None, limit=PAGE_SIZE, offset=offset)
    return render(request, "graph.html", visit, q=q, ecosystem=ecosystem, ecosystems=ECOSYSTEMS, items=items,
                  total=total, offset=offset, stats=graph.stats(ECOSYSTEMS),
                  pages=page_links("/graph", {"q": q, "ecosystem": ecosystem}, offset, total))


@router.get("/graph/{ecosystem}/{name:path}")
def project_page(request: Request, ecosystem: str, name: str, offset: int = 0) -> HTMLResponse:
    visit = visit_of(request)
    if storable_text(name)[1]:
        return error_page(request, 400, "Bad project name", _UNSTORABLE_MESSAGE, visit)
    graph = request.app.state.graph
    key = stored_project_name(ecosystem, name) if ecosystem in ECOSYSTEMS else name
    project = graph.project(ecosystem, key) if ecosystem in ECOSYSTEMS else None
    if project is None:
        return error_page(request, 404, "Project not indexed", f"{ecosystem} project {name!r} is not indexed", visit)
    offset = min(max(offset, 0), 2**31 - 1)
    dependents, total = graph.dependents(ecosystem, key, limit=PAGE_SIZE, offset=offset)
    return render(request, "project.html", visit, project=project, dependents=dependents, total=total,
                  offset=offset, pages=page_links(f"/graph/{ecosystem}/{key}", {}, offset, total))


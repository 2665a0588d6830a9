"""FastAPI dependencies shared by the routers and the console: one place that knows where app state lives."""

from __future__ import annotations

from fastapi import Request

from coherence_network.endpoints import ACTOR_HEADER, COMPONENT_ACTOR
from coherence_network.store import TaskStore

MAX_ACTOR_CHARS = 200


def store_of(request: Request) -> TaskStore:
    """The store this app was built with (set once in ``create_app``)."""
    return request.app.state.store


def actor_of(request: Request) -> str | None:
    """Who makes this write, for the audit trail: the X-Coherence-Actor header (cli:alice, telegram:bob), "api"
    without one; None for the pipeline's own components (component:<name>), whose work is not an operator's act."""
    actor = request.headers.get(ACTOR_HEADER, "").strip()[:MAX_ACTOR_CHARS]
    if actor.startswith(COMPONENT_ACTOR):
        return None
    return actor or "api"


def acting_as(request: Request, given: str | None) -> str:
    """The name an act that must have one is recorded under (a cancel, a decision, a policy, a bulk act): the one the
    body gives (``by``, ``decided_by``), else the X-Coherence-Actor header's, else "api"."""
    return given or actor_of(request) or "api"

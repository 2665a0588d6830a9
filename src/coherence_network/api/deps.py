"""FastAPI dependencies shared by the routers and the console: one place that knows where app state lives."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from fastapi import Request
from fastapi.concurrency import run_in_threadpool

from coherence_network.endpoints import ACTOR_HEADER, COMPONENT_ACTOR
from coherence_network.store import TaskStore
from coherence_network.store.core import WouldWait

T = TypeVar("T")

MAX_ACTOR_CHARS = 200


def store_of(request: Request) -> TaskStore:
    """The store this app was built with (set once in ``create_app``)."""
    return request.app.state.store


async def in_store(request: Request, call: Callable[[], T]) -> T:
    """A runner's store call (create, claim, heartbeat, finish). On SQLite first right here on the event loop with a
    connection that never waits for the write lock: no hop to a thread, about a fifth of the call's CPU (issue 23).
    When another writer holds the lock, nothing was done, and the call runs in a thread, where waiting is fine
    (counted in coherence_store_calls_total). PostgreSQL: always in a thread (its calls wait on the network)."""
    store = store_of(request)
    if not store.answers_without_waiting:
        return await run_in_threadpool(call)
    counted = request.app.state.metrics.store_calls
    try:
        result = store.without_waiting(call)
    except WouldWait:
        counted.labels("thread").inc()
        return await run_in_threadpool(call)
    counted.labels("event_loop").inc()
    return result


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

"""FastAPI dependencies shared by the routers and the console: one place that knows where app state lives."""

from __future__ import annotations

from fastapi import Request

from coherence_network.store import TaskStore


def store_of(request: Request) -> TaskStore:
    """The store this app was built with (set once in ``create_app``)."""
    return request.app.state.store

"""Answers serialised once, by their contract model straight to JSON bytes.

A route that returns a dict makes FastAPI validate it into its ``response_model``, dump that to Python values and
encode those with ``json`` (and a route without one walks the dict with ``jsonable_encoder``, which also writes
times as +00:00, not Z). The hot paths (create, claim, heartbeat, finish) answer through here instead: one
validation and pydantic's own encoder, about a third of the cost (issue 23). The shape is the model's, as the
OpenAPI document says."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from starlette.responses import Response

JSON = "application/json"


def answer(model: type[BaseModel], value: dict[str, Any], status: int = 200,
           headers: dict[str, str] | None = None) -> Response:
    """``value`` (a store row or a dict of them) as ``model`` says, in one pass."""
    return Response(model.model_validate(value).model_dump_json().encode(), status, headers, JSON)

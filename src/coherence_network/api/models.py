"""The API's side of the contract: path and query parameters, the refusal of commands a task type may not carry,
and the error answers every route documents. The request bodies themselves are coherence_network.request_bodies,
shared with the client."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import Path, Query
from fastapi.exceptions import RequestValidationError
from pydantic import AfterValidator
from starlette.convertors import Convertor, register_url_convertor

from coherence_network.contract import SORT_COLUMNS, parse_sort
from coherence_network.request_bodies import INT32_MAX, TaskCreate, refuse_unstorable
from coherence_network.settings import Settings
from coherence_network.store.search import COUNT_CAP, MAX_QUERY_CHARS, MIN_PREFIX


class _IdSegment(Convertor[str]):
    """A path segment that reads as an integer (sign included): only such a segment reaches a ``{task_id}`` route,
    so /tasks/count, /tasks/claim... are never taken for an id (a method they lack is 405 naming what they allow,
    not a 422 about the id), while every number reaches the id's bounds (422 when out of range). It stays text:
    the id's validation turns it into an integer, refusing thousands of digits as a 422, not a 500."""

    regex = "-?[0-9]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return str(value)


register_url_convertor("id", _IdSegment())

# Path and query parameters.
TaskId = Annotated[int, Path(ge=1, le=INT32_MAX, description="A task id (1 .. 2^31-1)")]
Offset = Annotated[int, Query(ge=0, le=INT32_MAX, description="Rows to skip")]


def _search_text(value: str) -> str:
    if len(value) > MAX_QUERY_CHARS:
        raise ValueError(f"a search is at most {MAX_QUERY_CHARS} characters, not {len(value)}")
    return refuse_unstorable(value)


SearchText = Annotated[str, AfterValidator(_search_text)]
SEARCH_QUERY = Query(
    None, json_schema_extra={"maxLength": MAX_QUERY_CHARS},
    description="Free-text search of the direction, output and question: tasks holding every word (the last also "
    f"as a prefix of {MIN_PREFIX}+ letters); quotes and operators are read as text. At most {MAX_QUERY_CHARS} "
    f"characters, no NUL. Its total counts up to {COUNT_CAP + 1} (total_exact false: more than {COUNT_CAP})",
)


def _task_sort(value: str) -> str:
    parse_sort(value)
    return value


TaskSort = Annotated[str, AfterValidator(_task_sort)]
SORT_QUERY = Query(
    None, description=f"Sort column, one of {', '.join(SORT_COLUMNS)}; a leading - sorts descending (-updated_at: "
    "most recently updated first); ties by id. Without it: by id, as order says",
)


def refuse_disallowed_commands(items: Sequence[TaskCreate], settings: Settings, *, batch: bool = False) -> None:
    """A command runs on every runner host as the runner's user: only the types COHERENCE_COMMAND_TASK_TYPES names
    may carry one. Refused as a 422 like any other invalid field (``batch`` locates items in ``tasks``)."""
    errors = [
        {"type": "command_not_allowed", "loc": ("body", "tasks", index, "command") if batch else ("body", "command"),
         "msg": refusal, "input": item.command}
        for index, item in enumerate(items)
        if item.command and (refusal := settings.command_refusal(item.task_type))
    ]
    if errors:
        raise RequestValidationError(errors)



# --- what an error answer looks like, for the OpenAPI schema ----------------------------------------------------
def _json_error(description: str, detail: dict[str, Any]) -> dict[str, Any]:
    schema = {"type": "object", "properties": {"detail": detail}, "required": ["detail"]}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_TEXT = {"type": "string"}
ERROR_RESPONSES: dict[int, dict[str, Any]] = {
    400: _json_error("Malformed request: a body that is not UTF-8 JSON, or a Host the API does not serve", _TEXT),
    401: _json_error("COHERENCE_API_TOKEN is set and Authorization: Bearer <token> is missing or wrong", _TEXT),
    404: _json_error("No such task (or project)", _TEXT),
    409: _json_error(
        "Not legal in the task's current status (named in current_status), or a stale claim token", _TEXT
    ),
    413: _json_error("The request body is larger than the API's body limit", _TEXT),
    503: _json_error("The store is unavailable (unreachable, locked or corrupt): retry later", _TEXT),
}


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route or router: the error statuses it can answer, as documented."""
    return {code: ERROR_RESPONSES[code] for code in codes}


# Every route: a malformed request, a missing token, a body over the limit, the store unavailable.
COMMON_ERRORS = responses(400, 401, 413, 503)

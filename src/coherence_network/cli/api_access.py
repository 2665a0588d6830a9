"""What the operator's commands that call the API share: a client whose errors become one line and an exit code
that says what went wrong, colour only on a terminal, and the name of the user who types the command."""

from __future__ import annotations

import os
import pwd
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import typer

from coherence_network.settings import Settings, get_settings

if TYPE_CHECKING:  # the client pulls in httpx: commands import it when they call the API
    from coherence_network.client import ApiClient


def colour_on() -> bool:
    """Colour only on a terminal, and never with NO_COLOR set (https://no-color.org)."""
    return sys.stdout.isatty() and not get_settings().no_color


def os_user() -> str:
    """The OS user running the command (from the user database, not the environment)."""
    return pwd.getpwuid(os.getuid()).pw_name


@contextmanager
def command_client(settings: Settings, *, conflict: str = "refused",
                   names: dict[str, str] | None = None) -> Iterator[ApiClient]:
    """The API client of an operator's command: an API error becomes one line on stderr and exit 1, or 2 when
    nothing could be done (the API calls the request malformed, or it, or its store, cannot be reached: a connection
    error, like a configuration error); ``conflict`` opens the line for a 409, ``names`` spells a 422's fields as the
    command's own options."""
    from coherence_network.client import (
        ApiAuthError,
        ApiClient,
        ApiConflict,
        ApiError,
        ApiNotFound,
        ApiUnavailable,
        ApiValidationError,
    )

    try:
        with ApiClient(settings=settings, retries=1, actor=f"cli:{os_user()}") as client:
            yield client
    except ApiError as exc:
        explained: list[tuple[type[ApiError], str, int]] = [
            (ApiNotFound, f"no such task: {exc.detail}", 1),
            (ApiConflict, f"{conflict}: {exc.detail}", 1),
            (ApiValidationError, f"the API refused the request as malformed: {invalid_fields(exc.detail, names)}", 2),
            (ApiAuthError, f"the API refused the token (set COHERENCE_API_TOKEN): {exc.detail}", 1),
            (ApiUnavailable, (f"the API at {settings.agent_api_base} is unreachable ({exc.detail}): see "
                             "docs/RUNBOOK.md#pipeline-recovery"), 2),
        ]
        message, code = next(((m, c) for kind, m, c in explained if isinstance(exc, kind)), (str(exc), 1))
        typer.echo(message, err=True)
        raise typer.Exit(code) from exc


SHOWN_INPUT_CHARS = 40  # a refused value longer than this is not repeated (a whole direction, a command)


def invalid_fields(detail: object, names: dict[str, str] | None = None) -> str:
    """A 422's ``detail`` (pydantic's list of errors) as one readable line: ``field: message (got value)`` for each,
    joined by ``; ``, a field spelled as ``names`` says (the command's option) else by its name in the request."""
    if not isinstance(detail, list):
        return " ".join(str(detail).split())
    parts = []
    for error in detail:
        if not isinstance(error, dict):
            parts.append(str(error))
            continue
        loc = [str(p) for p in error.get("loc", ()) if p not in ("body", "path", "query", "header")]
        field = ".".join(loc)
        field = (names or {}).get(field, field)
        given = error.get("input")
        got = (f" (got {given!r})" if isinstance(given, (str, int, float)) and not isinstance(given, bool)
               and len(repr(given)) <= SHOWN_INPUT_CHARS else "")
        message = " ".join(str(error.get("msg", "")).removeprefix("Value error, ").split())
        parts.append(f"{field}: {message}{got}" if field else f"{message}{got}")
    return "; ".join(parts)


"""Posted forms: read only once the session and its CSRF token are known, checked by the API's own request models,
and a store action on a task answered with 303 or the API's message as a page."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import parse_qs

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, ValidationError

from coherence_network.api.errors import bounded_error
from coherence_network.console.pages import Visit, error_page, sessions_of, visit_of
from coherence_network.errors import CoherenceError
from coherence_network.store import Conflict, NotFound

log = logging.getLogger("coherence.api")
MAX_FORM_BYTES = 64 * 1024


class FormRefused(CoherenceError):
    """A posted form that is not acted on; its error page is the answer."""

    def __init__(self, page: HTMLResponse) -> None:
        super().__init__(page.status_code)
        self.page = page


async def posted_form(request: Request) -> tuple[Visit, dict[str, str]]:
    """The session and the posted fields, once the CSRF token matched; else FormRefused (a 403 page, mostly)."""
    visit = visit_of(request)
    if visit.new_cookie:  # no session came with the post: it cannot carry this session's token
        raise FormRefused(error_page(request, 403, "Form refused",
                                     "This form has no valid session; reload the page and retry."))
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        raise FormRefused(error_page(request, 415, "Form refused",
                                     "Forms are posted as application/x-www-form-urlencoded.", visit))
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise FormRefused(error_page(request, 413, "Form refused", f"A form is at most {MAX_FORM_BYTES} bytes.",
                                     visit))
    fields = {k: v[0] for k, v in parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True).items()}
    if not sessions_of(request).csrf_ok(visit.session, fields.pop("csrf", None)):
        log.warning("console: form %s refused: missing or wrong CSRF token", request.url.path)
        raise FormRefused(error_page(request, 403, "Form refused", "The form's CSRF token is missing or wrong; "
                                     "reload the page and submit it again.", visit))
    return visit, fields


Model = TypeVar("Model", bound=BaseModel)


def validated(model: type[Model], values: dict[str, Any]) -> Model | list[str]:
    """The API's request model over the form's values, or its messages (the same rules as the JSON API)."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        return [f"{'.'.join(map(str, e['loc'])) or 'form'}: {e['msg']}" for e in map(bounded_error, exc.errors())]


async def act_on_task(request: Request, visit: Visit, action: Callable[[], Any], done: str, task_id: int) -> Response:
    """Run a store action on a task; 303 to ``done`` on success, the API's 404/409/400 message as a page otherwise,
    with a link back to the task."""
    back = (f"/tasks/{task_id}", f"Back to task #{task_id}")
    try:
        await run_in_threadpool(action)
    except NotFound as exc:
        return error_page(request, 404, "Not found", str(exc), visit)
    except Conflict as exc:
        return error_page(request, 409, "Refused: the task is not in a state for this", str(exc), visit, back)
    except ValueError as exc:
        return error_page(request, 400, "Refused", str(exc), visit, back)
    return RedirectResponse(done, status_code=303)


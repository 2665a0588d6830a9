"""Sign-in and sign-out: the API token (when one is set) and a name in, a signed session cookie out. Each sign-in is
in the audit trail (``sign_in`` by console:<name>), and so is a refused one (``sign_in_failed``, the name tried and
the client's address), at most one a minute per address: a flood of wrong tokens cannot fill the store."""

from __future__ import annotations

import logging
import time
from urllib.parse import parse_qs, urlsplit

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from coherence_network.api.deps import store_of
from coherence_network.console.forms import MAX_FORM_BYTES, posted_form
from coherence_network.console.pages import (
    error_page,
    render,
    sessions_of,
    set_session_cookie,
    settings_of,
    token_required,
)
from coherence_network.console.session import COOKIE, clean_identity, local_path

router = APIRouter(include_in_schema=False)
log = logging.getLogger("coherence.api")
FAILED_SIGNIN_RECORD_SECONDS = 60.0  # per client address: a refused sign-in in the audit trail at most this often
_FAILURES_REMEMBERED = 1024  # addresses whose last recorded failure is kept (forgotten all at once when full)


def _failure_to_record(request: Request, client: str) -> bool:
    """Whether this refused sign-in goes into the audit trail: the first from ``client`` in a minute does (each one
    is in api.log anyway)."""
    last: dict[str, float] | None = getattr(request.app.state, "signin_failures", None)
    if last is None or len(last) >= _FAILURES_REMEMBERED:
        last = request.app.state.signin_failures = {}
    now = time.monotonic()
    if now - last.get(client, now - FAILED_SIGNIN_RECORD_SECONDS) < FAILED_SIGNIN_RECORD_SECONDS:
        return False
    last[client] = now
    return True


@router.get("/signin")
def signin_page(request: Request, next: str = "/") -> HTMLResponse:
    return render(request, "signin.html", None, next=local_path(next), error=None)


@router.post("/signin")
async def signin(request: Request) -> Response:
    """Token (when one is set) and an optional name in, a session cookie out; a wrong token is a logged 401.

    The sign-in form has no CSRF token (there is no session yet), so a post another site's page makes is refused by
    its Origin: it could otherwise swap the operator's session for one under a name of its choosing."""
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):  # scheme: a TLS proxy
        log.warning("console sign-in refused: posted from another origin (%s)", origin[:100])
        return error_page(request, 403, "Sign-in refused", "The sign-in form was posted from another site.")
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        return error_page(request, 413, "Sign-in refused", "The form is too large.")
    fields = {k: v[0] for k, v in parse_qs(body.decode("utf-8", errors="replace")).items()}
    target = local_path(fields.get("next"))
    token = settings_of(request).coherence_api_token
    identity = clean_identity(fields.get("identity", ""))
    client = request.client.host if request.client else "?"
    if token and not sessions_of(request).token_ok(fields.get("token", "").encode("utf-8", "replace")):
        log.warning("console sign-in refused from %s: wrong token", client)
        if _failure_to_record(request, client):
            await run_in_threadpool(store_of(request).audit_note, f"console:{identity}", "sign_in_failed",
                                    reason="wrong token", detail={"client": client})
        return render(request, "signin.html", None, code=401, next=target,
                      error="That is not the API token (COHERENCE_API_TOKEN). Nothing was signed in.")
    await run_in_threadpool(store_of(request).audit_note, f"console:{identity}", "sign_in", detail={"client": client})
    response = RedirectResponse(target, status_code=303)
    set_session_cookie(request, response, sessions_of(request).issue(identity))
    return response


@router.post("/signout")
async def signout(request: Request) -> Response:
    await posted_form(request)  # a sign-out is a form too: another site cannot sign the operator out
    response = RedirectResponse("/signin" if token_required(request) else "/", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


"""What every console page shares: the templates, the security headers, who is looking (the visit and its session
cookie), rendering a page or an error page, and paging links."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from fastapi import Request
from fastapi.responses import HTMLResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from coherence_network.console.session import COOKIE, Session, Sessions, local_path
from coherence_network.contract import TaskStatus, TaskType
from coherence_network.errors import CoherenceError
from coherence_network.settings import Settings
from coherence_network.status_view import failure_note, silence

PAGE_SIZE = 50
_TEMPLATES = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"),
                         autoescape=select_autoescape(default=True), trim_blocks=True, lstrip_blocks=True)


def compile_templates() -> None:
    """Compile every template now: compiling them costs more than rendering a page (about 150 ms in all, 50 ms for
    the overview's), so the API does it beside its start-up and the first page opened after a start renders as fast
    as the next."""
    for name in _TEMPLATES.list_templates(extensions=["html"]):
        _TEMPLATES.get_template(name)


def _utc(value: datetime) -> datetime:
    """A stored time in UTC (the store's times are UTC; a naive one is taken as UTC)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# A time is rendered in UTC, labelled; the console's JavaScript rewrites the text to the viewer's zone and keeps
# the UTC text as the element's title (shown on hover).
_TEMPLATES.filters["utc_iso"] = lambda value: _utc(value).strftime("%Y-%m-%dT%H:%M:%SZ")
_TEMPLATES.filters["utc_text"] = lambda value: _utc(value).strftime("%Y-%m-%d %H:%M:%S UTC")
_TEMPLATES.filters["failure_note"] = failure_note  # why a task's last run failed, as every view words it
_TEMPLATES.globals["silence"] = silence  # how long a running task printed nothing, as every view words it
# Every page: no script, style, image or connection from elsewhere, nothing inline (the console's JavaScript and CSS
# are files under /console-static), forms post only here, and no other site may frame a page (clickjacking).
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


class SignInNeeded(CoherenceError):
    """An unsigned visitor asked for a page while a token is set: answered with 303 to the sign-in page."""

    def __init__(self, target: str) -> None:
        super().__init__(target)
        self.target = target


@dataclass(frozen=True)
class Visit:
    """Who is looking, and the cookie to set when this visit opened the session (open console, first page)."""

    session: Session
    new_cookie: str | None = None


def settings_of(request: Request) -> Settings:
    return request.app.state.settings


def sessions_of(request: Request) -> Sessions:
    return request.app.state.console_sessions


def token_required(request: Request) -> bool:
    return bool(settings_of(request).coherence_api_token)


def visit_of(request: Request) -> Visit:
    """The visitor's session; without a token a visitor gets one on sight, with a token it takes a sign-in."""
    sessions = sessions_of(request)
    session = sessions.verify(request.cookies.get(COOKIE))
    if session is not None:
        return Visit(session)
    if token_required(request):
        raise SignInNeeded(_back_after_sign_in(request))
    cookie = sessions.issue("")
    return Visit(sessions.verify(cookie), cookie)  # type: ignore[arg-type]


def _back_after_sign_in(request: Request) -> str:
    """The page to return to: this one for a GET; for a form (posted after the session expired) the page the form
    was on, since its target answers only POST."""
    if request.method in ("GET", "HEAD"):
        return request.url.path + (f"?{request.url.query}" if request.url.query else "")
    referer = urlsplit(request.headers.get("referer", ""))
    if referer.netloc != request.headers.get("host"):
        return "/"
    return local_path(referer.path + (f"?{referer.query}" if referer.query else ""))


def set_session_cookie(request: Request, response: Response, cookie: str) -> None:
    response.set_cookie(COOKIE, cookie, max_age=int(sessions_of(request).lifetime), httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", path="/")


def render(request: Request, template: str, visit: Visit | None, code: int = 200, **values: Any) -> HTMLResponse:
    """A page with the layout's common values (who, CSRF token, whether sign-out makes sense, whether agent-phase
    tasks can run here)."""
    page = _TEMPLATES.get_template(template).render(
        request=request, path=request.url.path, identity=visit.session.identity if visit else None,
        csrf=sessions_of(request).csrf_token(visit.session) if visit else "",
        signed=token_required(request), Status=TaskStatus, statuses=list(TaskStatus), types=list(TaskType),
        agentless=settings_of(request).agentless_types, **values)
    response = HTMLResponse(page, status_code=code, headers=PAGE_HEADERS)
    if visit is not None and visit.new_cookie:
        set_session_cookie(request, response, visit.new_cookie)
    return response


def error_page(request: Request, status: int, title: str, message: str | list[str],
               visit: Visit | None = None, back: tuple[str, str] | None = None) -> HTMLResponse:
    """The console's error page; ``back`` is (link, words) for the page to return to, besides the overview."""
    messages = [message] if isinstance(message, str) else message
    return render(request, "error.html", visit, code=status, title=title, messages=messages, back=back)


def page_links(path: str, params: dict[str, Any], offset: int, total: int) -> dict[str, str | None]:
    """Previous and next page URLs keeping the filter."""
    def link(at: int) -> str:
        return f"{path}?{urlencode({**{k: v for k, v in params.items() if v}, 'offset': at})}"
    return {"prev": link(max(offset - PAGE_SIZE, 0)) if offset > 0 else None,
            "next": link(offset + PAGE_SIZE) if offset + PAGE_SIZE < total else None}

"""Telegram webhook: in webhook mode (TELEGRAM_WEBHOOK_URL set) Telegram posts updates here instead of the bot
polling for them.

Only a request carrying the webhook secret in ``X-Telegram-Bot-Api-Secret-Token`` is acted on (401 otherwise;
the bearer-token middleware exempts this path because Telegram cannot send one). Commands run as in long polling
(the same ``Commands``), in-process over this API's own store and rules (``StorePipeline``), and the reply goes
back as the webhook's answer (Telegram's "reply in the webhook response"), so the API needs no outgoing connection
of its own. Anything else that carries the secret gets 200, so Telegram never retries it forever. What the webhook
logs goes to this process's log, api.log (logger ``coherence.telegram``): telegram.log is the bot process's.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from coherence_network.api.deps import store_of
from coherence_network.api.errors import bounded_error
from coherence_network.api.models import responses
from coherence_network.api.routes_ops_issues import get_fatal_issues
from coherence_network.api.routes_pipeline import pipeline_status
from coherence_network.api.routes_steering import pause_scope, resume_scope
from coherence_network.client import ApiConflict, ApiNotFound, ApiValidationError
from coherence_network.contract import (
    PAUSE_ALL,
    FatalIssueList,
    PauseChange,
    PipelineStatus,
    Task,
    TaskCount,
    TaskPage,
    TaskType,
)
from coherence_network.request_bodies import CancelRequest, PauseRequest, ResumeRequest, TaskPatch, TelegramUpdate
from coherence_network.settings import Settings
from coherence_network.store import Conflict, NotFound
from coherence_network.telegram.botapi import SECRET_HEADER, webhook_secret
from coherence_network.telegram.commands import Commands

router = APIRouter(prefix="/api/agent/telegram", tags=["telegram"], responses=responses(400, 413))
log = logging.getLogger("coherence.telegram")
Result = TypeVar("Result")
Body = TypeVar("Body", bound=BaseModel)


class StorePipeline:
    """The commands' ``Pipeline`` in this process: the store and the read models the JSON API answers with, and
    the client's errors where the JSON API would answer 404, 409 or 422, so every reply reads as in long polling."""

    def __init__(self, request: Request) -> None:
        self.request = request
        self.store = store_of(request)

    @staticmethod
    def _as_answered(call: Callable[[], Result]) -> Result:
        try:
            return call()
        except NotFound as exc:
            raise ApiNotFound(404, str(exc)) from exc
        except Conflict as exc:
            raise ApiConflict(409, str(exc)) from exc

    def count_tasks(self) -> TaskCount:
        return TaskCount.model_validate(self._as_answered(self.store.count))

    def list_tasks(self, *, status: str | None = None, order: str = "newest", limit: int = 50) -> TaskPage:
        items, total = self._as_answered(
            lambda: self.store.list(status=status, order="oldest" if order == "oldest" else "newest", limit=limit))
        return TaskPage.model_validate({"items": items, "total": total, "limit": limit, "offset": 0,
                                        "total_exact": True})

    def get_task(self, task_id: int) -> Task:
        return Task.model_validate(self._as_answered(lambda: self.store.get(task_id)))

    def decide(self, task_id: int, decision: str, decided_by: str) -> Task:
        """PATCH /api/agent/tasks/{id}'s rules (TaskPatch), then the store's decide."""
        self._valid(TaskPatch, {"decision": decision, "decided_by": decided_by})
        return Task.model_validate(self._as_answered(lambda: self.store.decide(task_id, decision, decided_by)))

    def pause(self, by: str, reason: str, *, task_type: str | None = None) -> PauseChange:
        """POST /api/agent/pause's rules (PauseRequest), then the API's own pause_scope."""
        body = self._valid(PauseRequest, {"type": task_type, "by": by, "reason": reason})
        return PauseChange.model_validate(pause_scope(self.store, _scope(body.type), body.by, body.reason))

    def resume(self, by: str, *, task_type: str | None = None) -> PauseChange:
        """POST /api/agent/resume's rules (ResumeRequest), then the API's own resume_scope."""
        body = self._valid(ResumeRequest, {"type": task_type, "by": by})
        return PauseChange.model_validate(resume_scope(self.store, _scope(body.type), body.by))

    @staticmethod
    def _valid(model: type[Body], values: dict[str, Any]) -> Body:
        """The JSON API's request model over ``values``; its 422 as the client raises it."""
        try:
            return model.model_validate(values)
        except ValidationError as exc:
            raise ApiValidationError(422, [bounded_error(e) for e in exc.errors()]) from None

    def cancel(self, task_id: int, reason: str, *, by: str | None = None) -> Task:
        """POST /api/agent/tasks/{id}/cancel's rules (CancelRequest), then the store's cancel."""
        try:
            CancelRequest.model_validate({"reason": reason, "by": by})
        except ValidationError as exc:
            raise ApiValidationError(422, [bounded_error(e) for e in exc.errors()]) from None
        return Task.model_validate(self._as_answered(lambda: self.store.cancel(task_id, by or "api", reason)))

    def pipeline_status(self) -> PipelineStatus:
        return PipelineStatus.model_validate(pipeline_status(self.request))

    def fatal_issues(self) -> FatalIssueList:
        return FatalIssueList.model_validate(get_fatal_issues(self.request))


def _scope(task_type: TaskType | None) -> str:
    return task_type.value if task_type else PAUSE_ALL


def _run_command(request: Request, update: Any) -> tuple[int, str] | None:
    return Commands(request.app.state.settings, StorePipeline(request)).handle(update)


# The body is documented, not validated up front: the secret is checked first (401), and an update the bot cannot
# read still gets 200 so that Telegram does not send it again forever.
_UPDATE_BODY = {"required": True, "content": {"application/json": {"schema": TelegramUpdate.model_json_schema()}}}


@router.post("/webhook", openapi_extra={"requestBody": _UPDATE_BODY},
             responses={401: {"description": "Missing or wrong X-Telegram-Bot-Api-Secret-Token"}})
async def telegram_webhook(request: Request) -> JSONResponse:
    """One update from Telegram (a TelegramUpdate); the answer is the reply (a sendMessage) or empty."""
    settings: Settings = request.app.state.settings
    expected = webhook_secret(settings)
    given = request.headers.get(SECRET_HEADER, "")
    if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
        log.warning("webhook call from %s refused: %s secret", request.client.host if request.client else "?",
                    "wrong" if given else "missing")
        return JSONResponse({"detail": f"missing or wrong {SECRET_HEADER}"}, status_code=401)
    try:
        update = await request.json()
    except ValueError:
        log.warning("webhook body is not JSON; ignored")
        return JSONResponse({})
    reply = await run_in_threadpool(_run_command, request, update)
    if reply is None:
        return JSONResponse({})
    chat_id, text = reply
    log.info("reply to chat %s in the webhook answer: %s", chat_id, text.splitlines()[0][:120])
    return JSONResponse({"method": "sendMessage", "chat_id": chat_id, "text": text})

"""Telegram webhook: in webhook mode (TELEGRAM_WEBHOOK_URL set) Telegram posts updates here instead of the bot
polling for them.

Only a request carrying the webhook secret in ``X-Telegram-Bot-Api-Secret-Token`` is acted on (401 otherwise;
the bearer-token middleware exempts this path because Telegram cannot send one). Commands run exactly as in long
polling, through the API's own HTTP interface, and the reply goes back as the webhook's answer (Telegram's
"reply in the webhook response"), so the API needs no outgoing connection of its own. Anything else that carries
the secret gets 200, so Telegram never retries it forever.
"""

from __future__ import annotations

import hmac
import logging
import logging.handlers
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from coherence_network.api.models import responses
from coherence_network.client import ApiClient
from coherence_network.logfiles import ROTATE_BACKUPS, ROTATE_BYTES, JSONFormatter, UTCFormatter, component_log
from coherence_network.request_bodies import TelegramUpdate
from coherence_network.settings import Settings
from coherence_network.telegram import SECRET_HEADER, Commands, webhook_secret

router = APIRouter(prefix="/api/agent/telegram", tags=["telegram"], responses=responses(400, 413))
log = logging.getLogger("coherence.telegram")


def _log_to_telegram_log(app: FastAPI) -> None:
    """Webhook commands belong in telegram.log like polled ones (they also reach api.log); attached once per app."""
    if getattr(app.state, "telegram_log", None) is not None:
        return
    settings: Settings = app.state.settings
    handler = logging.handlers.RotatingFileHandler(
        component_log("telegram").path(settings), maxBytes=ROTATE_BYTES, backupCount=ROTATE_BACKUPS, encoding="utf-8"
    )
    handler.setFormatter(JSONFormatter() if settings.coherence_log_json else UTCFormatter())
    log.addHandler(handler)
    app.state.telegram_log = handler


def _own_address(request: Request, settings: Settings) -> str:
    """This server as the socket the request came in on, so commands reach this very API."""
    server = request.scope.get("server")
    if not server or server[1] is None:
        return settings.agent_api_base
    host, port = server
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _run_command(settings: Settings, base_url: str, update: Any) -> tuple[int, str] | None:
    with ApiClient(base_url, settings=settings, retries=1) as client:
        return Commands(settings, client).handle(update)


# The body is documented, not validated up front: the secret is checked first (401), and an update the bot cannot
# read still gets 200 so that Telegram does not send it again forever.
_UPDATE_BODY = {"required": True, "content": {"application/json": {"schema": TelegramUpdate.model_json_schema()}}}


@router.post("/webhook", openapi_extra={"requestBody": _UPDATE_BODY},
             responses={401: {"description": "Missing or wrong X-Telegram-Bot-Api-Secret-Token"}})
async def telegram_webhook(request: Request) -> JSONResponse:
    """One update from Telegram (a TelegramUpdate); the answer is the reply (a sendMessage) or empty."""
    settings: Settings = request.app.state.settings
    _log_to_telegram_log(request.app)
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
    reply = await run_in_threadpool(_run_command, settings, _own_address(request, settings), update)
    if reply is None:
        return JSONResponse({})
    chat_id, text = reply
    log.info("reply to chat %s in the webhook answer: %s", chat_id, text.splitlines()[0][:120])
    return JSONResponse({"method": "sendMessage", "chat_id": chat_id, "text": text})

"""The Bot API client: the few methods the bot uses, errors that never carry the token, and the webhook's secret."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import httpx

from coherence_network.errors import CoherenceError
from coherence_network.logfiles import RUN_FILES, shared_secret
from coherence_network.setting_values import derived_key
from coherence_network.settings import Settings

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"


def secret_path(settings: Settings) -> Path:
    return RUN_FILES["telegram_webhook_secret"].path(settings)


def webhook_secret(settings: Settings, *, create: bool = False) -> str:
    """TELEGRAM_WEBHOOK_SECRET; else, with COHERENCE_API_TOKEN set, one derived from the token (the bot and the API
    both hold it, and no file does, so a task that reads var/ cannot forge Telegram's calls); else the secret
    generated once under var/run/ (a loopback API without a token, which anyone local may call anyway). Empty when
    none exists and ``create`` is false, which makes the webhook refuse every call."""
    if settings.telegram_webhook_secret:
        return settings.telegram_webhook_secret
    if settings.coherence_api_token:
        digest = derived_key(settings.coherence_api_token, "coherence-telegram-webhook-v1")
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")  # Telegram's alphabet: A-Za-z0-9_-
    path = secret_path(settings)
    if not create and not path.exists():
        return ""
    return shared_secret(path)


class TelegramError(CoherenceError):
    """The Bot API failed: ``status`` 0 means it could not be reached; ``retry_after`` comes with 429."""

    def __init__(self, method: str, status: int, description: str, retry_after: float | None = None) -> None:
        self.status = status
        self.description = description
        self.retry_after = retry_after
        super().__init__(f"{method} -> {status or 'unreachable'}: {description}")

    @property
    def retryable(self) -> bool:
        """Outages, rate limits and a (perhaps soon fixed) token refusal; not a request Telegram rejects."""
        return self.status in (0, 401, 429) or self.status >= 500


class BotApi:
    """The few Bot API methods the bot uses; errors never carry the token (it is part of every URL)."""

    def __init__(self, token: str, base: str, timeout: float) -> None:
        self.token = token
        self.timeout = timeout
        self._http = httpx.Client(base_url=f"{base.rstrip('/')}/bot{token}", timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def _redact(self, text: str) -> str:
        return text.replace(self.token, "<token>") if self.token else text

    def call(self, method: str, params: dict[str, Any], *, timeout: float | None = None) -> Any:
        try:
            response = self._http.post(f"/{method}", json=params, timeout=timeout or self.timeout)
            body = response.json()
        except httpx.HTTPError as exc:
            raise TelegramError(method, 0, self._redact(f"{type(exc).__name__}: {exc}")) from None
        except ValueError:
            raise TelegramError(method, response.status_code, "answer is not JSON") from None
        if response.status_code == 200 and isinstance(body, dict) and body.get("ok"):
            return body.get("result")
        body = body if isinstance(body, dict) else {}
        retry_after = (body.get("parameters") or {}).get("retry_after")
        description = self._redact(str(body.get("description", response.reason_phrase)))
        raise TelegramError(method, response.status_code, description,
                            float(retry_after) if isinstance(retry_after, (int, float)) else None)

    def send_message(self, chat_id: int, text: str) -> Any:
        return self.call("sendMessage", {"chat_id": chat_id, "text": text, "disable_web_page_preview": True})

    def get_updates(self, offset: int, timeout: float) -> list[Any]:
        params = {"offset": offset, "timeout": int(timeout), "allowed_updates": ["message"]}
        result = self.call("getUpdates", params, timeout=timeout + self.timeout)
        return result if isinstance(result, list) else []

    def set_webhook(self, url: str, secret: str) -> Any:
        return self.call("setWebhook", {"url": url, "secret_token": secret, "allowed_updates": ["message"]})

    def delete_webhook(self) -> Any:
        return self.call("deleteWebhook", {})

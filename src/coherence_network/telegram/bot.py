"""``coherence telegram``: the bot's process. Alerts and the outbox always; commands by long polling, or, in webhook
mode, only the webhook's registration (the API then takes the updates, see ``api/routes_telegram.py``)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from coherence_network.client import ApiClient
from coherence_network.outage import Outage
from coherence_network.settings import Settings
from coherence_network.telegram.botapi import BotApi, TelegramError, webhook_secret
from coherence_network.telegram.commands import Commands
from coherence_network.telegram.notifier import Notifier
from coherence_network.telegram.outbox import BACKOFF_MAX, BACKOFF_START, BotState, Sender, state_path

log = logging.getLogger("coherence.telegram")


class Bot:
    """``coherence telegram``: notifications and the outbox always; commands by long polling unless in webhook
    mode, where the API takes the updates and this process only registers the webhook."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stop = threading.Event()
        self.state = BotState(state_path(settings))
        self.api = BotApi(settings.telegram_bot_token, settings.telegram_api_base, settings.coherence_http_timeout)
        self.sender_api = BotApi(settings.telegram_bot_token, settings.telegram_api_base,
                                 settings.coherence_http_timeout)
        self.notify_client = ApiClient(settings=settings, retries=1)
        self.command_client = ApiClient(settings=settings, retries=1)
        self.commands = Commands(settings, self.command_client)
        self.notifier = Notifier(settings, self.notify_client, self.state)
        self.sender = Sender(self.state, self.sender_api, self.stop)

    def request_stop(self, *_: object) -> None:
        self.stop.set()

    def _until_ok(self, what: str, call: Callable[[], Any]) -> Any | None:
        """Retry a Bot API call with backoff; its result, or None when it failed for good or the bot stops."""
        outage = Outage(log, first_delay=BACKOFF_START, max_delay=BACKOFF_MAX)
        while not self.stop.is_set():
            try:
                result = call()
            except TelegramError as exc:
                if not exc.retryable:
                    log.error("%s failed: %s", what, exc)
                    return None
                delay = outage.failed("%s failed (%s); retry with backoff", what, exc)
                self.stop.wait(exc.retry_after or delay)
                continue
            outage.recovered("%s works again after %.1f s", what, outage.lasted())
            return result
        return None

    def _register_webhook(self) -> None:
        url = self.settings.telegram_webhook_url
        secret = webhook_secret(self.settings, create=True)
        if self._until_ok("setWebhook", lambda: self.api.set_webhook(url, secret)) is not None:
            log.info("webhook registered: %s", url)

    def _poll_updates(self) -> None:
        """Long polling; the webhook is deleted first, since Telegram refuses getUpdates while one is set."""
        if self._until_ok("deleteWebhook", self.api.delete_webhook) is None:
            return
        timeout = self.settings.telegram_poll_timeout
        while not self.stop.is_set():
            updates = self._until_ok("getUpdates", lambda: self.api.get_updates(self.state.offset, timeout))
            if updates is None:  # refused for good (e.g. 409: another bot polls with this token): wait, try again
                self.stop.wait(BACKOFF_MAX)
                continue
            for update in updates:
                reply = self.commands.handle(update)
                if reply is not None:
                    self.state.enqueue(*reply)
                update_id = update.get("update_id") if isinstance(update, dict) else None
                if isinstance(update_id, int):
                    self.state.advance(update_id + 1)

    def run(self) -> int:
        settings = self.settings
        webhook = bool(settings.telegram_webhook_url)
        log.info("telegram bot started: %s, %d alert chat(s), %d allowed user(s), API %s",
                 "webhook" if webhook else "long polling", len(settings.telegram_chats),
                 len(settings.telegram_allowed_users), settings.agent_api_base)
        if not settings.telegram_allowed_users:
            log.warning("TELEGRAM_ALLOWED_USER_IDS is empty: every command is refused")
        if not settings.telegram_chats:
            log.warning("TELEGRAM_CHAT_IDS is empty: no alerts are sent")
        inbound = self._register_webhook if webhook else self._poll_updates
        sender = threading.Thread(target=self.sender.run, name="telegram-sender", daemon=True)
        sender.start()
        threading.Thread(target=inbound, name="telegram-inbound", daemon=True).start()
        while not self.stop.is_set():
            try:
                self.notifier.run_once()
            except Exception:  # a surprise in one pass must not end the bot; the next pass tries again
                log.exception("notification pass failed")
            self.stop.wait(settings.telegram_notify_interval)
        # a message Telegram already took must leave the outbox before the process ends, or the next start sends it
        # again: the send in flight finishes (within the HTTP timeout) and is recorded first
        sender.join(settings.coherence_http_timeout + 1)
        self.state.save()
        log.info("telegram bot stopped (%d message(s) still queued)", len(self.state.outbox))
        return 0

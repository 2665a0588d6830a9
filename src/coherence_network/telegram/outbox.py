"""The bot's persisted state and its outbox: every outgoing message is saved before it is sent, and delivered per
chat in order, once, with backoff while the Bot API is down."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

from coherence_network.logfiles import RUN_FILES, write_json_atomic
from coherence_network.outage import Outage
from coherence_network.settings import Settings
from coherence_network.telegram.botapi import BotApi, TelegramError
from coherence_network.telegram.wording import clip

log = logging.getLogger("coherence.telegram")

BACKOFF_START = 0.5
BACKOFF_MAX = 60.0


def state_path(settings: Settings) -> Path:
    return RUN_FILES["telegram_state.json"].path(settings)


class BotState:
    """Update offset, what was notified (key -> last time the condition was seen), when each waiting decision is
    to be reminded of, and the outbox, saved atomically on every change, so a restart neither resends an alert,
    nor reminds early, nor loses a message that was waiting to go out."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        data: dict[str, Any] = {}
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            log.error("state file %s unreadable, starting afresh: %s", path, exc)
        self.offset: int = int(data.get("update_offset", 0))
        self.notified: dict[str, float] = dict(data.get("notified", {}))
        self.primed: bool = bool(data.get("primed", False))
        self.outbox: list[dict[str, Any]] = list(data.get("outbox", []))
        # "chat|decision key" -> {"next": when the next reminder is due (epoch s), "sent": reminders sent so far}
        self.reminders: dict[str, dict[str, float]] = dict(data.get("reminders", {}))
        self._seq = max((m["seq"] for m in self.outbox), default=0)

    def save(self) -> None:
        with self.lock:
            write_json_atomic(self.path, {"update_offset": self.offset, "notified": self.notified,
                                          "primed": self.primed, "outbox": self.outbox,
                                          "reminders": self.reminders})

    def advance(self, offset: int) -> None:
        with self.lock:
            if offset > self.offset:
                self.offset = offset
                self.save()

    def enqueue(self, chat_id: int, text: str, key: str | None = None, now: float | None = None) -> None:
        """Queue a message (and, for an alert, remember its key) in one atomic save."""
        with self.lock:
            self._seq += 1
            self.outbox.append({"seq": self._seq, "chat_id": chat_id, "text": clip(text)})
            if key is not None:
                self.notified[key] = time.time() if now is None else now
            self.save()
            self.changed.notify_all()

    def delivered(self, seq: int) -> None:
        with self.lock:
            self.outbox = [m for m in self.outbox if m["seq"] != seq]
            self.save()


class Sender:
    """Delivers the outbox: per chat in order, each message once; 429 waits ``retry_after``, 5xx and connection
    errors back off exponentially (an outage is logged when it starts and ends, per chat). A message Telegram
    rejects for good (400, 403) is dropped and logged."""

    def __init__(self, state: BotState, api: BotApi, stop: threading.Event) -> None:
        self.state = state
        self.api = api
        self.stop = stop
        self.not_before: dict[int, float] = {}
        self.outages: dict[int, Outage] = {}

    def _next_due(self) -> dict[str, Any] | None:
        with self.state.changed:
            heads: dict[int, dict[str, Any]] = {}
            for message in self.state.outbox:
                heads.setdefault(message["chat_id"], message)
            now = time.monotonic()
            due = [m for chat, m in heads.items() if self.not_before.get(chat, 0.0) <= now]
            if due:
                return dict(min(due, key=lambda m: m["seq"]))
            waits = [self.not_before[chat] - now for chat in heads]
            self.state.changed.wait(min([0.5, *waits]))
            return None

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self._send_next()
            except Exception:  # the sender thread must outlive any surprise (a full disk, a bug)
                log.exception("telegram sender error")
                self.stop.wait(BACKOFF_START)

    def _send_next(self) -> None:
        message = self._next_due()
        if message is None:
            return
        chat = message["chat_id"]
        try:
            self.api.send_message(chat, message["text"])
        except TelegramError as exc:
            if not exc.retryable:
                log.error("message to chat %s dropped: %s", chat, exc)
                self.state.delivered(message["seq"])
                return
            outage = self.outages.setdefault(chat, Outage(log, first_delay=BACKOFF_START, max_delay=BACKOFF_MAX))
            delay = outage.failed("sending to chat %s failed (%s); the outbox keeps its messages, retry with "
                                  "backoff", chat, exc)
            self.not_before[chat] = time.monotonic() + (exc.retry_after or delay)
            return
        if chat in self.outages:
            outage = self.outages.pop(chat)
            outage.recovered("sending to chat %s works again after %.1f s", chat, outage.lasted())
        self.state.delivered(message["seq"])
        log.info("sent to chat %s: %s", chat, message["text"].splitlines()[0][:120])

"""Telegram bot: operators read the pipeline and answer decisions from a phone; alerts reach the chats that watch.

The bot is an API client like every other component: commands and notifications go through ``ApiClient``. Updates
come in by long polling (``getUpdates``, no public address needed) or, with ``TELEGRAM_WEBHOOK_URL`` set, through
``POST /api/agent/telegram/webhook`` on the API (see ``api/routes_telegram.py``), which runs the same ``Commands``.
Outgoing messages go through one persisted outbox, delivered per chat in order with backoff, so an outage of the
Bot API delays messages but neither loses, duplicates nor reorders them. What was notified is remembered in
``var/run/telegram_state.json`` (with the update offset and the outbox), so a restart resends nothing.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from coherence_network import grading
from coherence_network.client import ApiClient, ApiConflict, ApiError, ApiNotFound, ApiUnavailable
from coherence_network.contract import AttentionFlag, FatalIssue, Task, TaskStatus
from coherence_network.errors import CoherenceError
from coherence_network.logfiles import RUN_FILES, shared_secret, write_json_atomic
from coherence_network.settings import Settings, derived_key
from coherence_network.status_view import render_task

log = logging.getLogger("coherence.telegram")

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
MAX_TEXT = 4000  # Telegram's limit is 4096 UTF-16 units; leave room
BACKOFF_START = 0.5
BACKOFF_MAX = 60.0
REMEMBER_SECONDS = 24 * 3600  # a notified condition unseen this long may be notified again when it returns
SHOWN = 10  # items listed per section of a reply

HELP = """Commands:
/status - counts, running tasks, waiting decisions, attention
/tasks [status] - newest tasks (status: pending, running, needs_decision, completed, failed)
/task <id> - one task
/reply <id> <decision> - answer a task that waits for a decision
/attention - open monitor issues, fatal issues and waiting decisions
/help - this text"""


def state_path(settings: Settings) -> Path:
    return RUN_FILES["telegram_state.json"].path(settings)


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


def clip(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 15] + "\n...(truncated)"


# --- parsing ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Command:
    name: str
    args: str


_COMMAND = re.compile(r"^/([A-Za-z0-9_]{1,32})(?:@[A-Za-z0-9_]+)?(?:\s+(.*))?$", re.DOTALL)


def parse_command(text: str) -> Command | None:
    """``/reply@SomeBot 12 yes`` -> Command("reply", "12 yes"); None for anything that is not a command."""
    match = _COMMAND.match(text.strip())
    if not match:
        return None
    return Command(match.group(1).lower(), (match.group(2) or "").strip())


@dataclass(frozen=True)
class Incoming:
    """The parts of a new text message the bot acts on."""

    update_id: int
    user_id: int
    chat_id: int
    chat_type: str
    text: str


def read_update(update: Any) -> Incoming | None:
    """A new text message from a user, else None: edits, stickers, channel posts and malformed updates are ignored."""
    if not isinstance(update, dict) or not isinstance(update.get("update_id"), int):
        return None
    message = update.get("message")
    if not isinstance(message, dict):
        return None
    sender, chat, text = message.get("from"), message.get("chat"), message.get("text")
    if not (isinstance(sender, dict) and isinstance(chat, dict) and isinstance(text, str)):
        return None
    user_id, chat_id = sender.get("id"), chat.get("id")
    if not (isinstance(user_id, int) and isinstance(chat_id, int)):
        return None
    return Incoming(update["update_id"], user_id, chat_id, str(chat.get("type", "")), text)


# --- rate limit ---------------------------------------------------------------------------------------------
class TokenBucket:
    """``capacity`` messages at once, then ``per_second``: a flapping condition cannot flood a chat."""

    def __init__(self, capacity: int, per_second: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(capacity)
        self.per_second = per_second
        self.clock = clock
        self.tokens = float(capacity)
        self.updated = clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.per_second)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


# --- Bot API ------------------------------------------------------------------------------------------------
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


# --- commands -----------------------------------------------------------------------------------------------
# Flags whose items Telegram lists one by one (each decision, each fatal issue): not a second time as a flag.
LISTED_APART = frozenset({"needs_decision", "component_held_back"})


def issue_line(issue: FatalIssue) -> str:
    """A fatal issue by its component, and the command that clears it once fixed."""
    return f"[{issue.component}] {issue.reason} -> coherence fatal --clear (once fixed)"


def flag_line(flag: AttentionFlag) -> str:
    """A health flag as a line, like a monitor issue: rule, severity, message, and the command to paste."""
    return f"[{flag.code}] ({flag.severity}) {flag.message}" + (f" -> {flag.command}" if flag.command else "")


def _about(task: Task) -> str:
    item = (task.context or {}).get("item")
    return " ".join(str(item or task.direction).split())[:80]


def _waiting_line(task: Task) -> str:
    return f"#{task.id}: {task.decision_prompt or '?'} -> /reply {task.id} <decision>"


class Commands:
    """Turns one update into at most one reply for one chat; refuses whoever is not allowed, and never raises."""

    def __init__(self, settings: Settings, client: ApiClient) -> None:
        self.settings = settings
        self.client = client
        self._handlers: dict[str, Callable[[str, Incoming], str]] = {
            "status": self._status, "tasks": self._tasks, "task": self._task, "reply": self._reply,
            "attention": self._attention, "help": self._help, "start": self._help,
        }

    def is_allowed(self, msg: Incoming) -> bool:
        """Only listed users, and only in the alert chats or their own private chat with the bot."""
        if msg.user_id not in self.settings.telegram_allowed_users:
            return False
        own_chat = msg.chat_type == "private" and msg.chat_id == msg.user_id
        return own_chat or msg.chat_id in self.settings.telegram_chats

    def handle(self, update: Any) -> tuple[int, str] | None:
        msg = read_update(update)
        if msg is None:
            kinds = [str(k) for k in update if k != "update_id"] if isinstance(update, dict) else [repr(update)[:40]]
            log.info("ignored update (not a new text message): %s", ", ".join(sorted(kinds)) or "empty")
            return None
        if not self.is_allowed(msg):
            log.warning("refused sender: user %s in chat %s (%s)", msg.user_id, msg.chat_id, msg.chat_type)
            return None
        command = parse_command(msg.text)
        if command is None:
            log.info("ignored plain text from user %s in chat %s", msg.user_id, msg.chat_id)
            return None
        log.info("command from user %s in chat %s: /%s %s", msg.user_id, msg.chat_id, command.name, command.args[:200])
        handler = self._handlers.get(command.name)
        if handler is None:
            return msg.chat_id, f"Unknown command /{command.name}.\n{HELP}"
        try:
            reply = handler(command.args, msg)
        except ApiUnavailable as exc:
            log.warning("API unreachable for /%s: %s", command.name, exc)
            reply = "The API is unreachable right now; try again in a minute."
        except ApiError as exc:
            log.warning("API refused /%s: %s", command.name, exc)
            reply = f"The API refused: {exc.detail}"
        except Exception:  # one bad command must not stop the bot or fail the webhook
            log.exception("/%s failed", command.name)
            reply = "Something went wrong; see var/logs/telegram.log."
        return msg.chat_id, clip(reply)

    def _help(self, _args: str, _msg: Incoming) -> str:
        return HELP

    def _status(self, _args: str, _msg: Incoming) -> str:
        counts = self.client.count_tasks()
        by_status = ", ".join(f"{s} {n}" for s, n in counts.by_status.items() if n)
        lines = [f"Tasks: {counts.total}" + (f" ({by_status})" if by_status else "")]
        running = self.client.list_tasks(status=TaskStatus.RUNNING, order="oldest", limit=SHOWN).items
        lines += [f"Running #{t.id} {t.task_type}: {t.current_step or _about(t)}" for t in running]
        waiting = self.client.list_tasks(status=TaskStatus.NEEDS_DECISION, order="oldest", limit=SHOWN)
        if waiting.total:
            lines.append(f"Waiting for a decision: {waiting.total}")
            lines += [f"  {_waiting_line(t)}" for t in waiting.items]
        report = self.client.pipeline_status()
        manager = report.project_manager
        state = "never seen" if not manager else manager.state
        lines.append(f"Runners: {grading.count_states(r.model_dump() for r in report.runners)}; "
                     f"project manager: {state}")
        flags = [f for f in report.attention if f.code != "needs_decision"]  # the decisions are listed above
        lines.append("Attention:" + ("" if flags else " none"))
        lines += [f"  {flag_line(f)}" for f in flags]
        return "\n".join(lines)

    def _tasks(self, args: str, _msg: Incoming) -> str:
        status = args.strip().lower() or None
        if status is not None and status not in set(TaskStatus):
            return f"Unknown status {status!r}; use one of: {', '.join(TaskStatus)}."
        page = self.client.list_tasks(status=status, limit=SHOWN)
        if not page.items:
            return "No tasks" + (f" with status {status}." if status else ".")
        head = f"{page.total} tasks" + (f" {status}" if status else "") + " (newest first):"
        return "\n".join([head] + [f"#{t.id} {t.task_type} {t.status}: {_about(t)}" for t in page.items])

    def _task(self, args: str, _msg: Incoming) -> str:
        if not args.isdigit():
            return "Usage: /task <id>"
        try:
            return render_task(self.client.get_task(int(args)).model_dump(mode="json"))
        except ApiNotFound:
            return f"No task #{args}."

    def _reply(self, args: str, msg: Incoming) -> str:
        match = re.match(r"^(\d+)\s+(\S.*)$", args, re.DOTALL)
        if not match:
            return "Usage: /reply <id> <decision>, e.g. /reply 12 yes"
        task_id, decision = int(match.group(1)), match.group(2).strip()
        who = f"telegram:{msg.user_id}"
        try:
            self.client.decide(task_id, decision, who)
        except ApiNotFound:
            return f"No task #{task_id}; nothing changed."
        except ApiConflict:
            status = self.client.get_task(task_id).status
            return f"Task #{task_id} does not wait for a decision (its status is {status}); nothing changed."
        log.info("decision recorded for task %s by %s", task_id, who)
        return (f"Decision recorded for task #{task_id} by {who}: {decision}\n"
                "The task is pending and runs again with it.")

    def _attention(self, _args: str, _msg: Incoming) -> str:
        """Fatal issues, the health rules' flags as the API evaluates them now (what `coherence status` shows), the
        monitor's issues of its own host, then the decisions waiting."""
        fatal_issues = self.client.fatal_issues().items
        lines = [f"Fatal issues: {len(fatal_issues) or 'none'}"] + [f"  {issue_line(i)}" for i in fatal_issues[:SHOWN]]
        attention = self.client.pipeline_status().attention
        flags = [f for f in attention if f.source != "monitor" and f.code not in LISTED_APART]
        lines.append(f"Health: {len(flags) or 'fine'}")
        lines += [f"  {flag_line(f)}" for f in flags[:SHOWN]]
        host = [f for f in attention if f.source == "monitor"]
        lines.append(f"Monitor host issues: {len(host) or 'none'}")
        lines += [f"  {flag_line(f)} (on {f.host})" for f in host[:SHOWN]]
        waiting = self.client.list_tasks(status=TaskStatus.NEEDS_DECISION, order="oldest", limit=SHOWN)
        lines.append(f"Waiting for a decision: {waiting.total or 'none'}")
        lines += [f"  {_waiting_line(t)}" for t in waiting.items]
        return "\n".join(lines)


# --- persisted state ----------------------------------------------------------------------------------------
class BotState:
    """Update offset, what was notified (key -> last time the condition was seen) and the outbox, saved atomically
    on every change, so a restart neither resends an alert nor loses a message that was waiting to go out."""

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
        self._seq = max((m["seq"] for m in self.outbox), default=0)

    def save(self) -> None:
        with self.lock:
            write_json_atomic(self.path, {"update_offset": self.offset, "notified": self.notified,
                                          "primed": self.primed, "outbox": self.outbox})

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


# --- outgoing -----------------------------------------------------------------------------------------------
class Sender:
    """Delivers the outbox: per chat in order, each message once; 429 waits ``retry_after``, 5xx and connection
    errors back off exponentially. A message Telegram rejects for good (400, 403) is dropped and logged."""

    def __init__(self, state: BotState, api: BotApi, stop: threading.Event) -> None:
        self.state = state
        self.api = api
        self.stop = stop
        self.not_before: dict[int, float] = {}
        self.failures: dict[int, int] = {}

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
            failures = self.failures.get(chat, 0) + 1
            self.failures[chat] = failures
            delay = exc.retry_after or min(BACKOFF_MAX, BACKOFF_START * 2 ** (failures - 1))
            self.not_before[chat] = time.monotonic() + delay
            log.warning("sending to chat %s failed (%s); retry %d in %.1f s", chat, exc, failures, delay)
            return
        self.failures.pop(chat, None)
        self.state.delivered(message["seq"])
        log.info("sent to chat %s: %s", chat, message["text"].splitlines()[0][:120])


# --- notifications ------------------------------------------------------------------------------------------
def _decision_alert(task: Task) -> str:
    return (f"Task #{task.id} ({task.task_type}: {_about(task)}) needs a decision:\n"
            f"{task.decision_prompt or '?'}\n\nAnswer with:\n/reply {task.id} <decision>")


def _flag_alert(flag: AttentionFlag) -> tuple[str, str]:
    """(key, text) of a flag: a health rule's by its code, a monitor's host fact by its rule and since when."""
    if flag.source == "monitor":
        return f"monitor:{flag.code}:{_when(flag.since)}", f"Monitor issue on {flag.host}: {flag_line(flag)}"
    return f"health:{flag.code}", f"Health: {flag_line(flag)}"


def _failure_alert(task: Task) -> str:
    tail = (task.output or "").strip()[-300:]
    return (f"Task #{task.id} ({task.task_type}: {_about(task)}) failed for good "
            + ("(" if task.exit_code is None else f"(exit {task.exit_code}, ")
            + f"{task.attempts} failed attempt(s) of {task.max_attempts} allowed)."
            + (f"\nLast output:\n{tail}" if tail else "") + f"\nDetails: /task {task.id}")


def _when(moment: datetime | None) -> str:
    return moment.isoformat() if moment else ""


class Notifier:
    """Polls the API for what a person must hear about and queues each thing once per chat, within the chat's
    rate limit (what the limit holds back is queued on a later pass, not lost)."""

    def __init__(self, settings: Settings, client: ApiClient, state: BotState) -> None:
        self.settings = settings
        self.client = client
        self.state = state
        self.buckets = {chat: TokenBucket(settings.telegram_rate_burst, settings.telegram_rate_per_minute / 60)
                        for chat in settings.telegram_chats}
        self._api_down = False

    def alerts(self) -> tuple[list[tuple[str, str]], list[str]]:
        """(key, text) of everything alert-worthy now, and keys of past failures to remember silently on the
        first run (history from before the bot existed is not news)."""
        found: list[tuple[str, str]] = []
        waiting = self.client.list_tasks(status=TaskStatus.NEEDS_DECISION, order="oldest", limit=500).items
        found += [(f"decision:{t.id}:{_when(t.updated_at)}", _decision_alert(t)) for t in waiting]
        found += [(f"fatal:{i.id}:{_when(i.at)}", f"FATAL: {issue_line(i)}") for i in self.client.fatal_issues().items]
        # what needs attention (critical, high: grading.GRADES), graded as status and doctor grade it; decisions
        # and fatal issues are alerted above, one by one
        found += [_flag_alert(f) for f in self.client.pipeline_status().attention
                  if grading.grade(f.severity).attention and f.code not in LISTED_APART]
        failed = self.client.list_tasks(status=TaskStatus.FAILED, order="newest", limit=50).items
        failures = [(f"failed:{t.id}:{_when(t.finished_at)}", _failure_alert(t)) for t in reversed(failed)]
        if self.state.primed:
            return found + failures, []
        return found, [key for key, _ in failures]

    def run_once(self) -> None:
        try:
            alerts, history = self.alerts()
        except ApiError as exc:
            if not self._api_down:
                log.warning("cannot poll the API for notifications: %s", exc)
            self._api_down = True
            return
        if self._api_down:
            log.info("the API answers again")
        self._api_down = False
        now = time.time()
        with self.state.lock:
            for chat, bucket in self.buckets.items():
                for key in history:
                    self.state.notified[f"{chat}|{key}"] = now
                held = 0
                for key, text in alerts:
                    chat_key = f"{chat}|{key}"
                    if chat_key in self.state.notified:
                        self.state.notified[chat_key] = now
                    elif bucket.take():
                        self.state.enqueue(chat, text, chat_key, now)
                    else:
                        held += 1
                if held:
                    log.info("rate limit holds back %d alert(s) for chat %s until a later pass", held, chat)
            self.state.notified = {k: t for k, t in self.state.notified.items() if now - t < REMEMBER_SECONDS}
            self.state.primed = True
            self.state.save()


# --- the bot ------------------------------------------------------------------------------------------------
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
        failures = 0
        while not self.stop.is_set():
            try:
                return call()
            except TelegramError as exc:
                failures += 1
                if not exc.retryable:
                    log.error("%s failed: %s", what, exc)
                    return None
                delay = exc.retry_after or min(BACKOFF_MAX, BACKOFF_START * 2 ** (failures - 1))
                log.warning("%s failed (%s); retry in %.1f s", what, exc, delay)
                self.stop.wait(delay)
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
        for target, name in ((self.sender.run, "telegram-sender"), (inbound, "telegram-inbound")):
            threading.Thread(target=target, name=name, daemon=True).start()
        while not self.stop.is_set():
            try:
                self.notifier.run_once()
            except Exception:  # a surprise in one pass must not end the bot; the next pass tries again
                log.exception("notification pass failed")
            self.stop.wait(settings.telegram_notify_interval)
        self.state.save()
        log.info("telegram bot stopped (%d message(s) still queued)", len(self.state.outbox))
        return 0

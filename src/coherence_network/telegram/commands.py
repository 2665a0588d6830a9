"""The bot's commands: reading an update, who may command, and the one reply each command gets.

The commands read and act on the pipeline through a ``Pipeline``: the typed API client in the bot's process (long
polling), the API's own store in-process behind the webhook (``api/routes_telegram.py``). Either answers with the
contract's types and raises the client's errors (``ApiNotFound``, ``ApiConflict``, ``ApiUnavailable``), so a command
answers the same whichever way its update came in."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from coherence_network import grading
from coherence_network.client import ApiConflict, ApiError, ApiNotFound, ApiUnavailable
from coherence_network.contract import FatalIssueList, PipelineStatus, Task, TaskCount, TaskPage, TaskStatus
from coherence_network.settings import Settings
from coherence_network.status_view import render_task
from coherence_network.telegram.wording import LISTED_APART, about, clip, flag_line, issue_line, waiting_line

log = logging.getLogger("coherence.telegram")

SHOWN = 10  # items listed per section of a reply

HELP = """Commands:
/status - counts, running tasks, waiting decisions, attention
/tasks [status] - newest tasks (status: pending, running, needs_decision, completed, failed)
/task <id> - one task
/reply <id> <decision> - answer a task that waits for a decision
/attention - open monitor issues, fatal issues and waiting decisions
/help - this text"""


class Pipeline(Protocol):
    """What the commands read and do; ``ApiClient`` is one (see the module docstring)."""

    def count_tasks(self) -> TaskCount: ...

    def list_tasks(self, *, status: str | None = ..., order: str = ..., limit: int = ...) -> TaskPage: ...

    def get_task(self, task_id: int) -> Task: ...

    def decide(self, task_id: int, decision: str, decided_by: str) -> Task: ...

    def pipeline_status(self) -> PipelineStatus: ...

    def fatal_issues(self) -> FatalIssueList: ...


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


class Commands:
    """Turns one update into at most one reply for one chat; refuses whoever is not allowed, and never raises."""

    def __init__(self, settings: Settings, pipeline: Pipeline) -> None:
        self.settings = settings
        self.pipeline = pipeline
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
            reply = "Something went wrong; the log says what (telegram.log, or api.log for the webhook)."
        return msg.chat_id, clip(reply)

    def _help(self, _args: str, _msg: Incoming) -> str:
        return HELP

    def _status(self, _args: str, _msg: Incoming) -> str:
        counts = self.pipeline.count_tasks()
        by_status = ", ".join(f"{s} {n}" for s, n in counts.by_status.items() if n)
        lines = [f"Tasks: {counts.total}" + (f" ({by_status})" if by_status else "")]
        running = self.pipeline.list_tasks(status=TaskStatus.RUNNING, order="oldest", limit=SHOWN).items
        lines += [f"Running #{t.id} {t.task_type}: {t.current_step or about(t)}" for t in running]
        waiting = self.pipeline.list_tasks(status=TaskStatus.NEEDS_DECISION, order="oldest", limit=SHOWN)
        if waiting.total:
            lines.append(f"Waiting for a decision: {waiting.total}")
            lines += [f"  {waiting_line(t)}" for t in waiting.items]
        report = self.pipeline.pipeline_status()
        manager = report.project_manager
        state = "never seen" if not manager else manager.state
        lines.append(f"Runners: {grading.count_states(r.model_dump() for r in report.runners)}; "
                     f"project manager: {state}")
        flags = [f for f in report.attention if f.rule != "needs_decision"]  # the decisions are listed above
        lines.append("Attention:" + ("" if flags else " none"))
        lines += [f"  {flag_line(f)}" for f in flags]
        return "\n".join(lines)

    def _tasks(self, args: str, _msg: Incoming) -> str:
        status = args.strip().lower() or None
        if status is not None and status not in set(TaskStatus):
            return f"Unknown status {status!r}; use one of: {', '.join(TaskStatus)}."
        page = self.pipeline.list_tasks(status=status, limit=SHOWN)
        if not page.items:
            return "No tasks" + (f" with status {status}." if status else ".")
        head = f"{page.total} tasks" + (f" {status}" if status else "") + " (newest first):"
        return "\n".join([head] + [f"#{t.id} {t.task_type} {t.status}: {about(t)}" for t in page.items])

    def _task(self, args: str, _msg: Incoming) -> str:
        if not args.isdigit():
            return "Usage: /task <id>"
        try:
            return render_task(self.pipeline.get_task(int(args)).model_dump(mode="json"))
        except ApiNotFound:
            return f"No task #{args}."

    def _reply(self, args: str, msg: Incoming) -> str:
        match = re.match(r"^(\d+)\s+(\S.*)$", args, re.DOTALL)
        if not match:
            return "Usage: /reply <id> <decision>, e.g. /reply 12 yes"
        task_id, decision = int(match.group(1)), match.group(2).strip()
        who = f"telegram:{msg.user_id}"
        try:
            self.pipeline.decide(task_id, decision, who)
        except ApiNotFound:
            return f"No task #{task_id}; nothing changed."
        except ApiConflict:
            status = self.pipeline.get_task(task_id).status
            return f"Task #{task_id} does not wait for a decision (its status is {status}); nothing changed."
        log.info("decision recorded for task %s by %s", task_id, who)
        return (f"Decision recorded for task #{task_id} by {who}: {decision}\n"
                "The task is pending and runs again with it.")

    def _attention(self, _args: str, _msg: Incoming) -> str:
        """Fatal issues, the health rules' flags as the API evaluates them now (what `coherence status` shows), the
        monitor's issues of its own host, then the decisions waiting."""
        fatal_issues = self.pipeline.fatal_issues().items
        lines = [f"Fatal issues: {len(fatal_issues) or 'none'}"] + [f"  {issue_line(i)}" for i in fatal_issues[:SHOWN]]
        attention = self.pipeline.pipeline_status().attention
        flags = [f for f in attention if f.source != "monitor" and f.rule not in LISTED_APART]
        lines.append(f"Health: {len(flags) or 'fine'}")
        lines += [f"  {flag_line(f)}" for f in flags[:SHOWN]]
        host = [f for f in attention if f.source == "monitor"]
        lines.append(f"Monitor host issues: {len(host) or 'none'}")
        lines += [f"  {flag_line(f)} (on {f.host})" for f in host[:SHOWN]]
        waiting = self.pipeline.list_tasks(status=TaskStatus.NEEDS_DECISION, order="oldest", limit=SHOWN)
        lines.append(f"Waiting for a decision: {waiting.total or 'none'}")
        lines += [f"  {waiting_line(t)}" for t in waiting.items]
        return "\n".join(lines)

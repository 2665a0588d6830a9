"""The bot's steering commands: ``/pause [type] <reason>`` and ``/resume [type]`` (no type: the whole pipeline),
as ``telegram:<username or id>``, and the lines that say what is paused. Through the same ``pause``/``resume`` as
``coherence pause``/``resume`` (the API client, or the API's own store behind the webhook)."""

from __future__ import annotations

import re
from typing import Protocol

from coherence_network.contract import PAUSE_ALL, PAUSE_SCOPES, Pause, PauseChange

PAUSE_USAGE = "Usage: /pause [type] <reason>, e.g. /pause impl provider down (no type: the whole pipeline)"
_USERNAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")  # what Telegram allows in a username, and nothing to escape


class Steering(Protocol):
    """What the steering commands do; ``ApiClient`` is one."""

    def pause(self, by: str, reason: str, *, task_type: str | None = None) -> PauseChange: ...

    def resume(self, by: str, *, task_type: str | None = None) -> PauseChange: ...


def actor(user_id: int, username: str) -> str:
    """``telegram:<username>``, or ``telegram:<id>`` for a user without one."""
    return f"telegram:{username if _USERNAME.match(username) else user_id}"


def _scope_and_rest(args: str) -> tuple[str, str]:
    """The scope the first word names (``all`` or a task type), else the whole pipeline; and the rest."""
    first, _, rest = args.strip().partition(" ")
    if first.lower() in PAUSE_SCOPES:
        return first.lower(), rest.strip()
    return PAUSE_ALL, args.strip()


def _type(scope: str) -> str | None:
    return None if scope == PAUSE_ALL else scope


def pause_shown(pause: Pause) -> str:
    return f"{pause.scope} since {pause.since:%Y-%m-%d %H:%M} UTC by {pause.by}: {pause.reason}"


def pause_reply(steering: Steering, args: str, who: str) -> str:
    scope, reason = _scope_and_rest(args)
    if not reason:
        return PAUSE_USAGE
    answer = steering.pause(who, reason, task_type=_type(scope))
    if answer.pause is None:  # the API answers a pause with it; said plainly if it ever does not
        return f"Pause of {scope} not confirmed by the API; check with /status."
    if not answer.changed:
        return (f"Already paused, kept as it was: {pause_shown(answer.pause)}\n"
                f"Resume with: /resume {_resume_args(scope)}".rstrip())
    return (f"Paused {pause_shown(answer.pause)}\nRunners get nothing of it; running tasks finish.\n"
            f"Resume with: /resume {_resume_args(scope)}".rstrip())


def _resume_args(scope: str) -> str:
    return "" if scope == PAUSE_ALL else scope


def resume_reply(steering: Steering, args: str, who: str) -> str:
    word = args.strip().lower()
    if word and word not in PAUSE_SCOPES:
        return f"Unknown type {word[:40]!r}; use one of: {', '.join(PAUSE_SCOPES)} (none: the whole pipeline)."
    scope = word or PAUSE_ALL
    answer = steering.resume(who, task_type=_type(scope))
    if answer.pause is None:
        return f"{scope} was not paused; nothing changed."
    return f"Resumed {scope} by {who} (it was paused {pause_shown(answer.pause)}); waiting runners get it at once."


def pause_line(pause: Pause) -> str:
    """A pause and the command that resumes it."""
    return f"{pause_shown(pause)} -> /resume {_resume_args(pause.scope)}".rstrip()


def paused_lines(pauses: list[Pause]) -> list[str]:
    """What /status says about pauses: each one, or that nothing is paused."""
    if not pauses:
        return ["Paused: nothing"]
    return ["Paused:"] + [f"  {pause_line(p)}" for p in pauses]

"""What a task is started with: its argument list, and the runner's environment without the project's secrets.

A task never sees the runner's secrets: it gets the runner's environment without the project's own secrets, without
any variable whose value holds one of them (``Authorization: Bearer <token>``, a connection string with the database
password), and without anything named like a credential unless COHERENCE_TASK_ENV_PASSTHROUGH names it
(``task_environment``); known secret values are masked in its log and in the output sent to the API
(``SecretMask``). The same rule says which variables a component hides from its own /proc/<pid>/environ
(``process_hygiene``).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from coherence_network.agents import CUSTOM, PRESETS
from coherence_network.contract import Task, TaskType
from coherence_network.settings import SECRET_FIELDS, Settings

# A variable whose name holds one of these is a credential: a task gets it only when COHERENCE_TASK_ENV_PASSTHROUGH
# names it. The project's own secrets (SECRET_FIELDS and DATABASE_URL) never reach a task.
CREDENTIAL_MARKERS = ("TOKEN", "SECRET", "PASSWORD", "PASSWD", "API_KEY", "APIKEY", "ACCESS_KEY", "PRIVATE_KEY",
                      "CREDENTIAL")
PROJECT_SECRET_NAMES = frozenset(name.upper() for name in (*SECRET_FIELDS, "database_url"))
MASK = "***"
MASK_MIN_CHARS = 8  # a shorter value would mask ordinary words all over the output (and match inside any value)


def build_argv(task: Task, settings: Settings, prompt_dir: Path) -> list[str]:
    """The argument list to run: the task's own command, or the phase's agent preset (agents.PRESETS; ``custom`` is
    the COHERENCE_AGENT_COMMAND template with the prompt filled in).

    A command is run only for a type this runner's COHERENCE_COMMAND_TASK_TYPES allows (the API checks it at create;
    this runner may be configured stricter). Nothing is ever joined into a shell string: the prompt is one argument
    or a file."""
    if task.command:
        refusal = settings.command_refusal(task.task_type)
        if refusal:
            raise ValueError(f"configuration error on this runner: {refusal}; the command was not run")
        return shlex.split(task.command)
    if task.task_type is TaskType.RUN:
        raise ValueError("a run task needs a command (run tasks never use the agent template)")
    agent, model = settings.agent_for(task.task_type)
    template = settings.coherence_agent_command
    if agent == CUSTOM and not template:
        raise ValueError("task has no command and COHERENCE_AGENT_COMMAND is not set")
    prompt = task.direction
    if task.decision:
        prompt += f"\n\nThe operator decided: {task.decision}"
    prompt_dir.mkdir(parents=True, exist_ok=True)
    prompt_file = prompt_dir / f"prompt_{task.id}.md"
    prompt_file.write_text(prompt, encoding="utf-8")
    if agent != CUSTOM:
        return PRESETS[agent].argv(prompt, prompt_file, model)
    return [arg.replace("{prompt_file}", str(prompt_file)).replace("{prompt}", prompt) for arg in shlex.split(template)]


class SecretMask:
    """Replaces known secret values by ``***`` in task output, before it reaches the log file or the API.

    It is applied to whole lines: the runner reads a task's output a line at a time, and ``readline`` gathers a
    line however the pipe splits it, so a secret is masked wherever it appears whole within one line. Not covered:
    a value shorter than MASK_MIN_CHARS, one broken across lines or transformed (encoded, reversed, in part), and
    secrets the runner does not know (in files the task can read, which it runs as the same user)."""

    def __init__(self, values: Iterable[str]) -> None:
        worth = sorted({v for v in values if len(v) >= MASK_MIN_CHARS}, key=len, reverse=True)  # longest first
        self.pattern = re.compile("|".join(map(re.escape, worth))) if worth else None

    def __call__(self, text: str) -> str:
        return self.pattern.sub(MASK, text) if self.pattern else text


def secret_values(values: Iterable[str]) -> set[str]:
    """The given secret values and, for a URL among them, the password inside it (as written and decoded)."""
    found = set()
    for value in values:
        found.add(value)
        password = urlsplit(value).password if "://" in value else None
        if password:
            found |= {password, unquote(password)}
    return {value for value in found if value}


def environment_secrets(environ: Mapping[str, str]) -> set[str]:
    """The project's secret values an environment holds: its secret variables and the password in DATABASE_URL."""
    return secret_values(value for name, value in environ.items() if name.upper() in PROJECT_SECRET_NAMES)


def project_secrets(settings: Settings) -> set[str]:
    """Values of the project's own secrets: the secret settings (the generated webhook secret included),
    DATABASE_URL and the password inside it."""
    from coherence_network.telegram.botapi import webhook_secret

    return secret_values([*(getattr(settings, name) for name in SECRET_FIELDS), webhook_secret(settings),
                          settings.database_url])


def holds_secret(value: str, secrets: set[str]) -> bool:
    """The value is a secret, or contains one long enough to tell (MASK_MIN_CHARS): ``Bearer <token>``, a URI with
    the database password in it."""
    return value in secrets or any(len(secret) >= MASK_MIN_CHARS and secret in value for secret in secrets)


def is_credential_name(name: str) -> bool:
    return any(marker in name.upper() for marker in CREDENTIAL_MARKERS)


def is_project_secret(name: str, value: str, secrets: set[str]) -> bool:
    """A variable no task ever gets: one of the project's secrets, or one whose value holds one."""
    return name.upper() in PROJECT_SECRET_NAMES or holds_secret(value, secrets)


@dataclass(frozen=True)
class TaskEnvironment:
    """What a task is handed, and the mask for what it prints."""

    env: dict[str, str]
    mask: SecretMask


def task_environment(settings: Settings, environ: Mapping[str, str]) -> TaskEnvironment:
    """The runner's environment without secrets: the project's own are removed (also every variable whose value
    holds one of them), and so is every variable named like a credential unless COHERENCE_TASK_ENV_PASSTHROUGH names
    it. The values of all of them, passed or not, are masked in the task's output."""
    own = project_secrets(settings) | environment_secrets(environ)
    passthrough = {n.strip().upper() for n in settings.coherence_task_env_passthrough.split(",") if n.strip()}
    env, masked = {}, set(own)
    for name, value in environ.items():
        if is_project_secret(name, value, own):
            continue
        if is_credential_name(name):
            masked.add(value)
            if name.upper() not in passthrough:
                continue
        env[name] = value
    return TaskEnvironment(env, SecretMask(masked))

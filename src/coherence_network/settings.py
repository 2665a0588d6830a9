"""The one Settings class: every environment variable the project reads is declared here and nowhere else.

A field's name is its environment variable in lower case (``coherence_home`` is ``COHERENCE_HOME``), so the
runbook, ``coherence config`` and the code all use one spelling. What a value may be is checked by its field's type
(setting_values); checks across settings, and settings derived from others, are here.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import Field, PrivateAttr, ValidationError, model_validator
from pydantic_settings import SettingsConfigDict

from coherence_network.contract import TaskType
from coherence_network.errors import CoherenceError
from coherence_network.setting_values import (
    LOOPBACK_HOSTS,
    MIN_TOKEN_LENGTH,
    WILDCARD_BINDS,
    ApiToken,
    CommandTaskTypes,
    DatabaseUrl,
    HttpUrl,
    LogLevel,
    audit_days,
    host_name,
    invalid_settings,
    mask_url_secrets,
    parse_command_types,
    seen_limit,
)
from coherence_network.settings_agent import AgentSettings, StallSettings
from coherence_network.settings_telegram import TelegramSettings

# What other modules take from here; the checks and parsers of values live in setting_values.
SECRET_FIELDS = frozenset({"coherence_api_token", "telegram_bot_token", "telegram_webhook_secret"})
# Settings computed from others when not set themselves (Settings._derive); `coherence config` says so.
DERIVED_FROM = {"agent_api_base": ("COHERENCE_API_HOST", "COHERENCE_API_PORT"),
                "monitor_runner_seen_seconds": ("COHERENCE_RUNNER_HEARTBEAT_SECONDS",),
                "coherence_retain_audit_days": ("COHERENCE_RETAIN_TASKS_DAYS",)}


class ConfigError(CoherenceError):
    """A setting that cannot work (a bad database URL, a runtime folder that cannot be created): every command
    shows it as one line naming the variable and the cause, exits 2, and prints no traceback."""


@contextmanager
def config_errors_as_one_line(prog: str = "coherence") -> Iterator[None]:
    """Around a command's entry point: a ConfigError becomes ``prog: <message>`` on stderr and exit code 2."""
    try:
        yield
    except ConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except ValidationError as exc:
        print("\n".join(f"{prog}: {line}" for line in invalid_settings(exc)), file=sys.stderr)
        raise SystemExit(2) from None


class Settings(AgentSettings, StallSettings, TelegramSettings):
    """Configuration read from the environment (and an optional ``.env`` file in the working directory); the
    Telegram bot's fields are declared in settings_telegram, the coding agent's in settings_agent."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)
    _derived: set[str] = PrivateAttr(default_factory=set)

    # --- runtime folder and store -------------------------------------------------------------------------
    coherence_home: Path = Field(Path("var"), description="Runtime folder holding logs/, run/ and the SQLite db")
    database_url: DatabaseUrl = Field(
        "", description="SQLAlchemy URL of the store; empty means SQLite at $COHERENCE_HOME/coherence.db"
    )

    # --- API ------------------------------------------------------------------------------------------------
    coherence_api_host: str = Field("127.0.0.1", description="Address the API binds to")
    coherence_api_port: int = Field(8000, ge=1, le=65535, description="Port the API listens on")
    coherence_api_token: ApiToken = Field(
        "", description=f"Bearer token every route but /api/health and /api/ready needs when set; at least "
        f"{MIN_TOKEN_LENGTH} characters; required for a non-loopback bind"
    )
    coherence_allowed_hosts: str = Field(
        "", description="Extra names the API answers to (Host header, any port), comma-separated, * = any; "
        "loopback names, the bind address and the hosts of AGENT_API_BASE and TELEGRAM_WEBHOOK_URL always are"
    )
    coherence_max_body_bytes: int = Field(
        4 * 1024 * 1024, ge=65536, description="Largest request body the API reads; bigger ones get 413 unread (at "
        "least 12 x COHERENCE_OUTPUT_TAIL_BYTES + 16 KiB, so a runner's finish always fits)"
    )
    agent_api_base: HttpUrl = Field(
        "", description="Base URL clients use to reach the API; empty = derived from COHERENCE_API_HOST and "
        "COHERENCE_API_PORT (so moving the API's port moves every client)"
    )
    coherence_console_session_hours: float = Field(
        12.0, gt=0, le=24 * 30, description="How long a console sign-in lasts (the session cookie's lifetime)"
    )
    coherence_http_timeout: float = Field(10.0, gt=0, description="Seconds a client waits for one API response")
    coherence_http_retries: int = Field(
        5, ge=0, description="Retries a client makes on connection errors and 5xx before giving up"
    )

    # --- logging --------------------------------------------------------------------------------------------
    coherence_log_level: LogLevel = Field("INFO", description="Log level of component logs (DEBUG, INFO, WARNING...)")
    coherence_log_json: bool = Field(False, description="Write component logs as JSON lines instead of text")
    no_color: str = Field(
        "", description="Any non-empty value turns off colour in command output (https://no-color.org)"
    )

    # --- tasks ----------------------------------------------------------------------------------------------
    coherence_lease_seconds: float = Field(
        60.0, gt=0, description="Lease a claim carries; heartbeats extend it, expiry returns the task to pending"
    )
    coherence_reap_interval: float = Field(
        5.0, gt=0, description="Seconds between the API's passes over expired leases"
    )
    coherence_auto_migrate: bool = Field(True, description="The API upgrades the schema at start-up")
    coherence_max_attempts: int = Field(3, ge=1, description="Failed runs (lease expiries included) a task may have; "
                                        "a retriable failure before the last returns after a backoff")
    coherence_retry_delay_seconds: float = Field(30.0, ge=0, description="First backoff of an automatic retry "
                                                 "(doubled per attempt, equal jitter); type_policies may override")
    coherence_retry_max_delay_seconds: float = Field(3600.0, ge=0, description="Largest backoff of an automatic retry")
    coherence_breaker_failures: int = Field(5, ge=0, description="Failures in a row that pause a task type (the "
                                            "circuit breaker); 0 turns it off")
    coherence_count_cache_seconds: float = Field(
        1.0, ge=0, description="How stale the task counts (/api/agent/tasks/count, pipeline-status's counts and "
        "pending by type) may be for writes made through other API replicas"
    )
    coherence_claim_recheck_seconds: float = Field(
        10.0, gt=0, description="Seconds a waiting claim goes without looking at the store when nothing woke it (the "
        "safety net for wake-ups missed while PostgreSQL's listener reconnects, or made by another SQLite process)"
    )
    coherence_output_tail_bytes: int = Field(
        8000, ge=256, description="Bytes of a task's output kept on the task (the full output is in its log)"
    )

    # --- runner ---------------------------------------------------------------------------------------------
    coherence_workspace: Path = Field(Path("."), description="Folder tasks run in (the project the agents work on)")
    agent_task_timeout: float = Field(3600.0, gt=0, description="Seconds a task may run before it is killed")
    agent_kill_grace_seconds: float = Field(
        10.0, ge=0, description="Seconds between SIGTERM and SIGKILL when a task's process group is stopped"
    )
    coherence_runner_stop_grace_seconds: float = Field(
        30.0, ge=0, description="On SIGTERM, seconds the runner lets running tasks finish before releasing them"
    )
    coherence_runner_heartbeat_seconds: float = Field(
        15.0, gt=0, description="Seconds between a runner's registry heartbeats"
    )
    coherence_runner_backoff_max_seconds: float = Field(
        30.0, gt=0, description="Longest a runner slot waits before it claims again after a failure (the API "
        "refused a claim; a task could not start because the disk is full): the wait doubles from 1 s up to this"
    )
    coherence_task_env_passthrough: str = Field(
        "", description="Variables tasks get although their names look like credentials, comma-separated, e.g. "
        "ANTHROPIC_API_KEY,GH_TOKEN (their values are still masked in task output; the project's own secrets "
        "never pass)"
    )
    coherence_command_task_types: CommandTaskTypes = Field(
        "run", description="Task types that may carry a `command` (run by every runner as its user, no agent): "
        "comma-separated; empty or none = no task may. Checked by the API on create and again by each runner"
    )
    coherence_task_umask: str = Field(
        "", pattern=r"^([0-7]{3,4})?$", description="umask tasks run with (octal, e.g. 022); empty = the umask the "
        "component, or the supervisor that started it, was started with. Files under COHERENCE_HOME are 0600 anyway"
    )

    coherence_runner_forget_seconds: float = Field(
        3600.0, gt=0, description="The API forgets (prunes) a runner registry row not seen for this long"
    )
    coherence_runner_forget_stopped_seconds: float = Field(
        600.0, gt=0, description="The API forgets a runner that said it stopped (SIGTERM, SIGINT, end, a slot died) "
        "this long after; sooner than a dead one, which may still hold a task's files on its host"
    )

    # --- retention ------------------------------------------------------------------------------------------
    coherence_retain_tasks_days: float = Field(
        30.0, ge=0, description="Completed and failed tasks finished longer ago than this are deleted, with their "
        "task logs and prompt files; 0 keeps them forever (pending, running and needs_decision ones always stay)"
    )
    coherence_retain_resolutions_days: float = Field(
        30.0, ge=0, description="Resolved monitor issues (monitor_resolutions.jsonl and the store's rows) older "
        "than this are deleted; 0 keeps them forever"
    )
    coherence_retain_audit_days: float | None = Field(
        None, ge=0, description="Audit records older than this are deleted; 0 keeps them forever. Never shorter than "
        "the tasks' retention: default 365, or COHERENCE_RETAIN_TASKS_DAYS when longer (0, forever, when it is 0)"
    )
    coherence_prune_interval_seconds: float = Field(
        3600.0, gt=0, description="Seconds between the automatic retention passes of the API (store), the runner "
        "(task logs, prompts) and the monitor (resolutions)"
    )
    coherence_prune_batch: int = Field(
        500, ge=1, le=100_000, description="Rows deleted per transaction by a retention pass (short locks)"
    )

    # --- project manager ----------------------------------------------------------------------------------
    pipeline_needs_decision_timeout_hours: float = Field(
        0.0, ge=0, description="Hours a backlog item waits for a decision before the timeout acts; 0 waits forever"
    )
    pipeline_needs_decision_default: str = Field(
        "", max_length=5000,
        description="Answer recorded (decided_by timeout:default) when a decision times out; empty skips the item",
    )
    pipeline_stuck_minutes: float = Field(
        60.0, gt=0, description="pipeline-status flags a task running longer than this as stuck"
    )
    pipeline_failure_streak: int = Field(
        3, ge=1, description="pipeline-status flags this many failed tasks in a row (newest finished first)"
    )
    pipeline_min_success_rate: float = Field(
        0.5, ge=0, le=1, description="pipeline-status flags a 24 h success rate below this (0..1)"
    )
    pipeline_success_rate_min_tasks: int = Field(
        5, ge=1, description="Finished tasks in 24 h needed before the success rate is judged at all"
    )

    # --- monitor and supervisor ---------------------------------------------------------------------------
    pipeline_auto_recover: bool = Field(
        False, description="The monitor writes restart_requested.json for conditions a restart fixes"
    )
    pipeline_auto_commit: bool = Field(
        False, description="Commit the workspace after each completed spec/test/impl/review task (make run asks on a "
        "terminal when it is not set, default no; set, it answers)"
    )
    pipeline_auto_push: bool = Field(
        False, description="Push after each auto-commit (never forced; a failed push goes with the next one)"
    )
    pipeline_git_remote: str = Field("origin", description="Remote that auto-push pushes the current branch to")
    monitor_interval: float = Field(60.0, gt=0, description="Seconds between monitor checks")
    monitor_runner_seen_seconds: float | None = Field(
        None, gt=0, description="A runner that does not report its heartbeat interval is alive with a heartbeat "
        "this recent (no_runner otherwise); default 2 x COHERENCE_RUNNER_HEARTBEAT_SECONDS + 1 s, as for a runner "
        "that reports its interval"
    )
    monitor_component_seen_seconds: float = Field(
        300.0, gt=0, description="The project manager and the monitor are seen with a heartbeat this recent"
    )
    monitor_idle_minutes: float = Field(
        10.0, gt=0, description="no_task_running: work pending this long while nothing runs"
    )
    monitor_orphan_grace_seconds: float = Field(
        300.0, gt=0, description="orphan_running: lease expired, or task timeout passed, by more than this"
    )
    monitor_decision_wait_minutes: float = Field(
        30.0, ge=0, description="needs_decision turns high severity once a decision waited this long"
    )
    monitor_disk_min_free_mb: float = Field(
        500.0, ge=0, description="disk_low: free space under the log folder below this many MiB"
    )
    monitor_restart_cooldown_seconds: float = Field(
        300.0, ge=0, description="Auto-recover asks to restart the same component at most once in this time"
    )
    supervisor_backoff_seconds: float = Field(
        1.0, gt=0, description="First delay before restarting a crashed component; doubles on each further crash "
        "(a clean exit is restarted at once)"
    )
    supervisor_max_backoff_seconds: float = Field(
        60.0, gt=0, description="Longest delay between restarts of a crashing component; a held-back one "
        "(a fatal issue) is tried again this often"
    )
    supervisor_fatal_restarts: int = Field(
        5, ge=1,
        description="Crashes within SUPERVISOR_FATAL_WINDOW_SECONDS that make a component a fatal issue "
        "(held back alone)",
    )
    supervisor_fatal_window_seconds: float = Field(
        300.0, gt=0, description="Window in which SUPERVISOR_FATAL_RESTARTS crashes are counted"
    )
    supervisor_stop_grace_seconds: float = Field(
        45.0, ge=0, description="Seconds a component gets between SIGTERM and SIGKILL when the pipeline stops (by "
        "the supervisor, or by coherence stop unless --grace says otherwise)"
    )

    # --- indexer --------------------------------------------------------------------------------------------
    coherence_index_concurrency: int = Field(
        16, ge=1, le=256, description="Registry requests an indexer keeps in flight (--concurrency overrides)"
    )
    coherence_index_refresh_days: float = Field(
        7.0, ge=0, description="Indexed packages older than this are fetched again (--refresh-days overrides)"
    )
    coherence_index_retries: int = Field(
        4, ge=0, description="Retries of one registry request on connection errors, 429 and 5xx"
    )
    coherence_index_backoff_seconds: float = Field(
        0.5, ge=0, description="First retry delay of a registry request; doubles per retry, with jitter"
    )
    coherence_index_timeout: float = Field(30.0, gt=0, description="Seconds one registry request may take")

    @model_validator(mode="after")
    def _finish_fits_the_body_limit(self) -> Settings:
        """A runner's finish carries the output tail, up to 12 bytes a character as JSON (an escaped surrogate
        pair): a body limit it cannot fit under would turn every long output into a lost result."""
        needed = 12 * self.coherence_output_tail_bytes + 16384
        if self.coherence_max_body_bytes < needed:
            raise ValueError(f"COHERENCE_MAX_BODY_BYTES must be at least {needed} with COHERENCE_OUTPUT_TAIL_BYTES="
                             f"{self.coherence_output_tail_bytes} (12 bytes per tail character, plus 16 KiB)")
        return self

    @model_validator(mode="after")
    def _derive(self) -> Settings:
        """Settings that follow from others are derived, never repeated: clients talk to the API's own address."""
        if not self.agent_api_base:
            host = self.coherence_api_host
            if host in WILDCARD_BINDS:  # a wildcard bind answers on loopback too
                host = "127.0.0.1"
            elif ":" in host:
                host = f"[{host}]"
            self.agent_api_base = f"http://{host}:{self.coherence_api_port}"
            self._derived.add("agent_api_base")
        if self.monitor_runner_seen_seconds is None:
            self.monitor_runner_seen_seconds = seen_limit(self.coherence_runner_heartbeat_seconds)
            self._derived.add("monitor_runner_seen_seconds")
        if self.coherence_retain_audit_days is None:
            self._derived.add("coherence_retain_audit_days")
        self.coherence_retain_audit_days = audit_days(self.coherence_retain_audit_days,
                                                      self.coherence_retain_tasks_days)
        return self

    # --- derived paths --------------------------------------------------------------------------------------
    @property
    def home(self) -> Path:
        return self.coherence_home.expanduser().resolve()

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def command_task_types(self) -> frozenset[TaskType]:
        return parse_command_types(self.coherence_command_task_types)

    def command_refusal(self, task_type: str) -> str | None:
        """Why a task of this type may not carry a command here, naming the setting; None when it may."""
        allowed = self.command_task_types
        if task_type in allowed:
            return None
        if not allowed:
            return f"commands are turned off (COHERENCE_COMMAND_TASK_TYPES={self.coherence_command_task_types!r})"
        return (f"a {task_type} task may not carry a command: COHERENCE_COMMAND_TASK_TYPES allows commands only for "
                f"{', '.join(sorted(allowed))} tasks")

    @property
    def allowed_hosts(self) -> frozenset[str] | None:
        """Host names the API answers to (normalised by host_name), or None when any is (``*``).

        Loopback names cannot be rebound by a web page; the bind address and the hosts our own clients and
        Telegram are given are the addresses the API is meant to be reached at."""
        extra = [part.strip() for part in self.coherence_allowed_hosts.split(",") if part.strip()]
        if "*" in extra:
            return None
        names = [*LOOPBACK_HOSTS, *extra]
        if self.coherence_api_host not in WILDCARD_BINDS:
            names.append(self.coherence_api_host)
        names += [urlsplit(url).hostname or "" for url in (self.agent_api_base, self.telegram_webhook_url) if url]
        return frozenset(filter(None, map(host_name, names)))

    @property
    def store_url(self) -> str:
        """The database URL actually used: ``DATABASE_URL`` or the embedded SQLite file."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.home / 'coherence.db'}"

    def ensure_dirs(self) -> None:
        for folder in (self.home, self.logs_dir, self.run_dir):
            try:
                folder.mkdir(mode=0o700, parents=True, exist_ok=True)  # var/ holds task output: owner only
            except OSError as exc:
                raise ConfigError(
                    f"COHERENCE_HOME={self.coherence_home}: cannot create {folder}: {exc.strerror or exc}"
                ) from exc

    def source_of(self, name: str) -> str:
        """Where a value came from: environment, .env, derived (from which settings) or default."""
        if name.upper() in {key.upper() for key in os.environ}:
            return "environment"
        if name in self._derived:
            return "derived from " + " and ".join(DERIVED_FROM[name])
        if name in self.model_fields_set:
            return ".env"
        return "default"

    def described(self) -> list[dict[str, Any]]:
        """Every setting as {name, value, default, source, description}; secrets are masked."""
        rows = []
        for name, field in type(self).model_fields.items():
            value = getattr(self, name)
            default = field.default
            if name in SECRET_FIELDS:
                value = "***" if value else ""
            elif isinstance(value, str):
                value = mask_url_secrets(value)
            source = self.source_of(name)
            rows.append(
                {
                    "name": name.upper(),
                    "value": str(value) if isinstance(value, Path) else value,
                    "default": str(default) if isinstance(default, Path) else default,
                    "source": source,
                    "description": field.description or "",
                    "set": source in ("environment", ".env"),
                }
            )
        return rows


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings of this process, read once."""
    return Settings()

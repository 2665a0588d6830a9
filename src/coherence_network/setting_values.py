"""What a setting's value may be, and how it is read and shown: the checks behind the Settings fields (each a type
with its validator: a typo stops a component at start-up in one line, not at its first use), the parsers of list
values, and the masks that keep secrets out of what is shown. Settings (settings.py) reads the environment; this
module only looks at values."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from functools import lru_cache
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, ValidationError, ValidationInfo

from coherence_network.contract import TaskType

MIN_TOKEN_LENGTH = 16
# Printable ASCII without spaces: what an Authorization header carries unchanged (HTTP strips outer whitespace).
_TOKEN_CHARS = re.compile(r"[\x21-\x7e]+")
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_BINDS = frozenset({"0.0.0.0", "::", ""})
# The password of scheme://user:password@host, up to the last @ (SQLAlchemy takes unescaped / and @ in a password:
# masking too much is better than showing part of it), and secret-looking query values.
_URL_PASSWORD = re.compile(r"(?P<keep>[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/?#@]*:)\S*(?=@)")
_URL_QUERY_SECRET = re.compile(
    r"(?P<keep>[?&](?:password|passwd|pwd|secret|token|api_key|apikey)=)[^&#]*", re.IGNORECASE
)


def seen_limit(heartbeat_seconds: float) -> float:
    """How long a heartbeating process may be silent and still count as alive: two intervals and a second, so one
    late heartbeat (a slow pass) is not taken for a death."""
    return 2 * heartbeat_seconds + 1.0


def derived_key(token: str, purpose: str) -> bytes:
    """A key for one ``purpose`` derived from COHERENCE_API_TOKEN: never the token itself (a leaked derived key is no
    token), held in memory only (no file a task could read), and renewed when the token is rotated."""
    return hmac.new(token.encode(), purpose.encode(), hashlib.sha256).digest()


DEFAULT_AUDIT_DAYS = 365.0


def audit_days(audit: float | None, tasks: float) -> float:
    """COHERENCE_RETAIN_AUDIT_DAYS as it applies: the trail outlives the tasks it names (0 is forever). Unset: 365,
    or the tasks' retention when longer; set shorter than the tasks' retention: a configuration error."""
    if audit is None:
        return 0.0 if tasks == 0 else max(DEFAULT_AUDIT_DAYS, tasks)
    if audit != 0 and (tasks == 0 or audit < tasks):
        raise ValueError(f"COHERENCE_RETAIN_AUDIT_DAYS={audit:g} would delete audit records before the tasks they name "
                         f"(COHERENCE_RETAIN_TASKS_DAYS={tasks:g}{', forever' if tasks == 0 else ''}): set it to 0 "
                         f"(forever){'' if tasks == 0 else f' or at least {tasks:g}'}, or leave it unset")
    return audit


def parse_ids(value: str) -> frozenset[int]:
    """Comma-separated Telegram ids (chat ids may be negative); a typo fails at start-up, not silently."""
    try:
        return frozenset(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"expected comma-separated integer ids, got {value!r}") from None


@lru_cache(maxsize=16)
def parse_command_types(value: str) -> frozenset[TaskType]:
    """COHERENCE_COMMAND_TASK_TYPES: task types by name, comma-separated; empty or ``none`` is no type at all.
    Remembered: every create with a command asks (issue 23)."""
    names = {part.strip().lower() for part in value.split(",") if part.strip()} - {"none"}
    unknown = names - set(TaskType)
    if unknown:
        raise ValueError(f"unknown task types {sorted(unknown)}; choose from {', '.join(TaskType)}, or none")
    return frozenset(TaskType(name) for name in names)


# The stores this project runs on, with or without a driver named (postgresql+psycopg://, sqlite+pysqlite://).
_STORE_SCHEME = re.compile(r"(?:sqlite|postgresql)(?:\+[a-z0-9_]+)?://", re.IGNORECASE)


def database_url_refusal(url: str, cause: str) -> str:
    """Why DATABASE_URL cannot be used, in one line (its password hidden): said by Settings for a scheme that is no
    store of ours, and by the store for a URL SQLAlchemy cannot parse."""
    return (f"DATABASE_URL={mask_url_secrets(url)} is not a database URL this can use ({cause}); use "
            "postgresql://user:password@host:5432/coherence, or leave it empty for SQLite")


def http_url_refusal(name: str, url: str) -> str | None:
    """Why a setting that must be an http(s) URL is not one (None when it is): a typo stops a component at start-up
    with one line, not at its first request with a connection error."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number in 0..65535)
    except ValueError as exc:
        return f"{name}={mask_url_secrets(url)} is not a URL: {exc}"
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return (f"{name}={mask_url_secrets(url)} is not an http:// or https:// URL with a host (for example "
                "http://127.0.0.1:8000)")
    return None


def host_name(host: str) -> str:
    """One spelling per host for comparisons: lower case, no brackets or trailing dot, IP addresses compressed."""
    name = host.strip().lower().removeprefix("[").removesuffix("]").rstrip(".")
    try:
        return ipaddress.ip_address(name).compressed
    except ValueError:
        return name


def mask_url_secrets(value: str) -> str:
    """``postgresql://user:secret@db/x`` -> ``postgresql://user:***@db/x``; ``?token=abc`` -> ``?token=***``."""
    return _URL_QUERY_SECRET.sub(r"\g<keep>***", _URL_PASSWORD.sub(r"\g<keep>***", value))


def invalid_settings(exc: ValidationError) -> list[str]:
    """One line per bad variable, named as the operator spells it; never the value, which may be a secret."""
    lines = []
    for error in exc.errors():
        name = ".".join(str(part) for part in error["loc"]).upper()  # empty for a check across settings
        message = error["msg"].removeprefix("Value error, ")
        lines.append(message if message.startswith(name) else f"{name}: {message}")
    return lines


def _id_list(value: str) -> str:
    parse_ids(value)
    return value


def _usable_token(value: str) -> str:
    """A blank, short or unsendable token is a mistake to stop at start-up, not a lock anyone can open.

    The message never repeats the value: it is a secret, and it ends up on a terminal or in a log."""
    if value and (len(value) < MIN_TOKEN_LENGTH or not _TOKEN_CHARS.fullmatch(value)):
        raise ValueError(
            f"COHERENCE_API_TOKEN must be at least {MIN_TOKEN_LENGTH} characters of printable ASCII without "
            "spaces (got a blank, short or unsendable value); generate one with "
            "python3 -c 'import secrets; print(secrets.token_urlsafe(32))', or leave it empty for no token"
        )
    return value


def _a_store_of_ours(value: str) -> str:
    if value and not _STORE_SCHEME.match(value):
        scheme = value.split("://")[0] if "://" in value else ""
        raise ValueError(database_url_refusal(value, f"{scheme} is not a supported store" if scheme
                                              else "no scheme://"))
    return value


def _http_url(value: str, info: ValidationInfo) -> str:
    refusal = value and http_url_refusal(str(info.field_name).upper(), value)
    if refusal:
        raise ValueError(refusal)
    return value


def _known_types(value: str) -> str:
    parse_command_types(value)
    return value


def _known_level(value: str) -> str:
    level = value.upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise ValueError(f"unknown log level {value!r}")
    return level


# The types of the Settings fields whose values are checked (and, for the log level, spelled in capitals).
IdList = Annotated[str, AfterValidator(_id_list)]  # Telegram ids, comma-separated
ApiToken = Annotated[str, AfterValidator(_usable_token)]
DatabaseUrl = Annotated[str, AfterValidator(_a_store_of_ours)]
HttpUrl = Annotated[str, AfterValidator(_http_url)]  # empty, or an http(s) URL with a host
CommandTaskTypes = Annotated[str, AfterValidator(_known_types)]
LogLevel = Annotated[str, AfterValidator(_known_level)]

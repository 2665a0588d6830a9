"""Telegram bot pieces that need no network: command parsing, update reading, who may command, the rate limiter,
the persisted state and token redaction."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from coherence_network.cli.components import telegram
from coherence_network.settings import Settings
from coherence_network.telegram.botapi import BotApi, TelegramError, webhook_secret
from coherence_network.telegram.commands import HELP, Command, Commands, Incoming, parse_command, read_update
from coherence_network.telegram.outbox import BotState
from coherence_network.telegram.ratelimit import TokenBucket


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/status", Command("status", "")),
        ("  /STATUS  ", Command("status", "")),
        ("/reply 12 yes", Command("reply", "12 yes")),
        ("/reply@CoherenceBot 12 ship it, then tag v2", Command("reply", "12 ship it, then tag v2")),
        ("/reply 7 line one\nline two", Command("reply", "7 line one\nline two")),
        ("/tasks failed", Command("tasks", "failed")),
        ("hello /status", None),
        ("just text", None),
        ("/", None),
        ("/ status", None),
        ("", None),
    ],
)
def test_parse_command(text: str, expected: Command | None) -> None:
    assert parse_command(text) == expected


def _update(**message: Any) -> dict[str, Any]:
    base = {"message_id": 1, "text": "/status", "from": {"id": 5}, "chat": {"id": 5, "type": "private"}}
    return {"update_id": 10, "message": {**base, **message}}


def test_read_update_takes_new_text_messages_only() -> None:
    assert read_update(_update()) == Incoming(10, 5, 5, "private", "/status")
    sticker = _update()
    del sticker["message"]["text"]
    sticker["message"]["sticker"] = {"file_id": "x"}
    edited = {"update_id": 11, "edited_message": _update()["message"]}
    for bad in (sticker, edited, {"update_id": "x", "message": {}}, {"message": _update()["message"]}, [], None,
                _update(**{"from": None}), _update(chat={"id": "5"}), {"update_id": 3}):
        assert read_update(bad) is None, bad


class NoApi:
    """Commands never reach the API for an update they ignore or refuse."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the API was called: {name}")


def _commands(**env: str) -> Commands:
    settings = Settings(telegram_allowed_user_ids="5,6", telegram_chat_ids="-100", **env)
    return Commands(settings, NoApi())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("user", "chat", "chat_type", "allowed"),
    [
        (5, 5, "private", True),       # own private chat
        (5, -100, "supergroup", True),  # the alert chat
        (5, -200, "group", False),     # some other group
        (5, 6, "private", False),      # not their own chat
        (7, 7, "private", False),      # not an allowed user
        (7, -100, "supergroup", False),
    ],
)
def test_who_may_command_where(user: int, chat: int, chat_type: str, allowed: bool) -> None:
    assert _commands().is_allowed(Incoming(1, user, chat, chat_type, "/status")) is allowed


def test_empty_allow_list_means_nobody() -> None:
    settings = Settings(telegram_allowed_user_ids="", telegram_chat_ids="-100")
    commands = Commands(settings, NoApi())  # type: ignore[arg-type]
    assert not commands.is_allowed(Incoming(1, 5, 5, "private", "/status"))


def test_ignored_and_refused_updates_get_no_reply_and_never_reach_the_api() -> None:
    commands = _commands()
    assert commands.handle(_update(**{"from": {"id": 7}, "chat": {"id": 7, "type": "private"}})) is None
    assert commands.handle(_update(text="please ship it")) is None
    assert commands.handle({"update_id": 1, "edited_message": _update()["message"]}) is None
    assert commands.handle("garbage") is None


def test_unknown_command_and_bad_usage_get_short_help() -> None:
    commands = _commands()
    chat, text = commands.handle(_update(text="/frobnicate")) or (0, "")
    assert chat == 5 and text.startswith("Unknown command /frobnicate") and "/reply <id> <decision>" in text
    assert "Usage: /reply" in (commands.handle(_update(text="/reply 12")) or (0, ""))[1]
    assert "Usage: /task" in (commands.handle(_update(text="/task abc")) or (0, ""))[1]
    assert "Unknown status" in (commands.handle(_update(text="/tasks nonsense")) or (0, ""))[1]


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    now = [0.0]
    bucket = TokenBucket(3, 0.5, clock=lambda: now[0])
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    now[0] += 1.0  # half a token
    assert not bucket.take()
    now[0] += 1.0  # a whole one
    assert bucket.take() and not bucket.take()
    now[0] += 1000  # refills, but never beyond the burst
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]


def test_state_survives_a_restart_and_keeps_the_outbox_order(tmp_path: Path) -> None:
    path = tmp_path / "run" / "telegram_state.json"
    state = BotState(path)
    state.enqueue(1, "first", "1|decision:1:t")
    state.enqueue(1, "second")
    state.advance(42)
    state.delivered(state.outbox[0]["seq"])
    again = BotState(path)
    assert again.offset == 42 and "1|decision:1:t" in again.notified
    assert [m["text"] for m in again.outbox] == ["second"]
    again.enqueue(1, "third")
    assert [m["seq"] for m in again.outbox] == sorted(m["seq"] for m in again.outbox)


def test_unreadable_state_starts_afresh(tmp_path: Path) -> None:
    path = tmp_path / "telegram_state.json"
    path.write_text("{not json")
    assert BotState(path).offset == 0


def test_generated_webhook_secret_is_persisted_private_and_valid(tmp_path: Path) -> None:
    settings = Settings(coherence_home=tmp_path)
    assert webhook_secret(settings) == ""
    secret = webhook_secret(settings, create=True)
    assert secret == webhook_secret(settings) == webhook_secret(settings, create=True)
    assert 32 <= len(secret) <= 256 and all(c.isalnum() or c in "-_" for c in secret)
    assert (tmp_path / "run" / "telegram_webhook_secret").stat().st_mode & 0o077 == 0
    assert webhook_secret(Settings(coherence_home=tmp_path, telegram_webhook_secret="given")) == "given"


def test_bot_api_errors_never_contain_the_token() -> None:
    token = "999:very-secret"
    api = BotApi(token, "http://127.0.0.1:9", timeout=1)  # nothing listens on the discard port
    with pytest.raises(TelegramError) as caught:
        api.send_message(1, "hi")
    assert caught.value.status == 0 and caught.value.retryable and token not in str(caught.value)
    assert api._redact(f"POST http://x/bot{token}/sendMessage") == "POST http://x/bot<token>/sendMessage"


def test_retryable_errors() -> None:
    assert TelegramError("m", 429, "slow down", 3).retryable
    assert TelegramError("m", 502, "bad gateway").retryable
    assert not TelegramError("m", 400, "chat not found").retryable
    assert not TelegramError("m", 403, "bot was blocked").retryable


def test_every_command_the_bot_answers_is_in_its_help_and_the_cli_help(tmp_path: Path) -> None:
    """/help in the chat and ``coherence telegram --help`` name every command, so none is there only to be found."""
    commands = Commands(Settings(coherence_home=tmp_path), pipeline=None)  # type: ignore[arg-type]
    answered = set(commands._handlers) - {"start"}  # /start: what Telegram sends as a chat opens; answered as /help
    assert answered - set(re.findall(r"^/([a-z]+) ", HELP, re.MULTILINE)) == set()
    assert answered - set(re.findall(r"/([a-z]+)\b", telegram.__doc__ or "")) == set()

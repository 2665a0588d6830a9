"""Settings, the log-file registry and the one log line format."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from coherence_network.logfiles import REGISTRY, setup_logging, task_log_path, write_json_atomic
from coherence_network.settings import Settings


def test_defaults_and_derived_paths(tmp_path: Path) -> None:
    settings = Settings(coherence_home=tmp_path / "var")
    assert settings.coherence_api_host == "127.0.0.1" and settings.coherence_api_port == 8000
    assert settings.store_url == f"sqlite:///{tmp_path / 'var' / 'coherence.db'}"
    settings.ensure_dirs()
    assert settings.logs_dir.is_dir() and settings.run_dir.is_dir()
    assert task_log_path(settings, 7) == tmp_path / "var" / "logs" / "task_7.log"


def test_environment_variables_are_the_field_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COHERENCE_API_PORT", "9001")
    monkeypatch.setenv("DATABASE_URL", "postgresql://db/x")
    settings = Settings()
    assert settings.coherence_api_port == 9001 and settings.store_url == "postgresql://db/x"


def test_bad_values_are_rejected_with_the_field_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COHERENCE_API_PORT", "99999")
    with pytest.raises(ValidationError, match="coherence_api_port"):
        Settings()
    monkeypatch.delenv("COHERENCE_API_PORT")
    monkeypatch.setenv("COHERENCE_LOG_LEVEL", "chatty")
    with pytest.raises(ValidationError, match="unknown log level"):
        Settings()


def test_every_setting_has_a_description() -> None:
    assert all(row["description"] for row in Settings().described())


def test_config_command_masks_secrets_and_prints_json(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": os.environ.get("PYTHONPATH", ""), "COHERENCE_HOME": str(tmp_path),
           "COHERENCE_API_TOKEN": "topsecret-topsecret"}
    done = subprocess.run([sys.executable, "-m", "coherence_network.cli", "config", "--json"],
                          env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = {r["name"]: r for r in json.loads(done.stdout)}
    assert rows["COHERENCE_API_TOKEN"]["value"] == "***" and rows["COHERENCE_API_TOKEN"]["set"] is True
    assert "topsecret" not in done.stdout
    assert rows["COHERENCE_API_PORT"]["default"] == 8000
    text = subprocess.run([sys.executable, "-m", "coherence_network.cli", "config"],
                          env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert "COHERENCE_HOME" in text.stdout and "topsecret" not in text.stdout


@pytest.mark.parametrize("token", ["   ", "\t\n", "short", "x" * 15, "x" * 16 + " ", "has a space in the middle",
                                   "n\u00f6n-ascii-token-value"])
def test_a_blank_short_or_unsendable_token_is_refused(token: str) -> None:
    with pytest.raises(ValidationError, match="COHERENCE_API_TOKEN must be") as caught:
        Settings(coherence_api_token=token)
    assert "16" in str(caught.value)


def test_a_long_token_or_none_is_accepted() -> None:
    assert Settings(coherence_api_token="x" * 16).coherence_api_token == "x" * 16
    assert Settings(coherence_api_token="").coherence_api_token == ""


def test_the_body_limit_leaves_room_for_a_runners_finish() -> None:
    assert Settings().coherence_max_body_bytes == 4 * 1024 * 1024
    with pytest.raises(ValidationError, match="COHERENCE_MAX_BODY_BYTES must be at least 112384"):
        Settings(coherence_max_body_bytes=100_000)
    with pytest.raises(ValidationError, match="at least 1216384"):
        Settings(coherence_output_tail_bytes=100_000, coherence_max_body_bytes=1_000_000)


def test_config_masks_passwords_inside_urls(tmp_path: Path) -> None:
    env = {**os.environ, "COHERENCE_HOME": str(tmp_path),
           "DATABASE_URL": "postgresql+psycopg://coherence:pa%40ss:word@db-host:5432/coherence?sslmode=require",
           "AGENT_API_BASE": "http://runner:hunter2hunter2@api.internal:8000",
           "TELEGRAM_WEBHOOK_URL": "https://bot.example/hook?token=webhookpathsecret&x=1"}
    for args in (["config"], ["config", "--json"]):
        done = subprocess.run([sys.executable, "-m", "coherence_network.cli", *args],
                              env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        for secret in ("pa%40ss", "word@", "hunter2", "webhookpathsecret"):
            assert secret not in done.stdout, (args, secret)
        assert "postgresql+psycopg://coherence:***@db-host:5432/coherence?sslmode=require" in done.stdout
        assert "http://runner:***@api.internal:8000" in done.stdout and "token=***&x=1" in done.stdout


def test_allowed_hosts_follow_the_bind_address_the_clients_and_the_webhook() -> None:
    default = Settings()
    assert default.allowed_hosts == frozenset({"localhost", "127.0.0.1", "::1"})
    wide = Settings(coherence_api_host="10.1.2.3", agent_api_base="http://API.internal:8000/",
                    telegram_webhook_url="https://Bot.Example.net/api/agent/telegram/webhook",
                    coherence_allowed_hosts="api.example.org, [2001:db8::1] ,", coherence_api_token="x" * 16)
    assert wide.allowed_hosts == frozenset({"localhost", "127.0.0.1", "::1", "10.1.2.3", "api.internal",
                                            "bot.example.net", "api.example.org", "2001:db8::1"})
    assert Settings(coherence_allowed_hosts="*").allowed_hosts is None


def test_registry_declares_each_file_once_with_a_purpose() -> None:
    assert {"api.log", "agent_runner.log", "task_{id}.log", "project_manager_state.json"} <= set(REGISTRY)
    assert all(f.purpose and f.kind in {"log", "task", "state"} for f in REGISTRY.values())


def test_log_lines_are_utc_and_rotate(tmp_path: Path) -> None:
    settings = Settings(coherence_home=tmp_path)
    path = setup_logging("api", settings, console=False)
    logging.getLogger("coherence.test").info("hello %s", "world")
    line = path.read_text().splitlines()[-1]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO coherence\.test: hello world", line)
    handler = logging.getLogger().handlers[0]
    assert handler.maxBytes == 5 * 1024 * 1024 and handler.backupCount == 3  # type: ignore[attr-defined]
    setup_logging("api", settings, json_lines=True, console=False)
    logging.getLogger("coherence.test").warning("as json")
    entry = json.loads(path.read_text().splitlines()[-1])
    assert entry["message"] == "as json" and entry["level"] == "WARNING" and entry["ts"].endswith("+00:00")
    logging.getLogger().handlers.clear()


def test_atomic_json_write_replaces_whole_files(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    write_json_atomic(target, {"a": 1})
    write_json_atomic(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
    with pytest.raises(TypeError):
        write_json_atomic(target, {(1, 2): "tuple keys cannot be JSON"})
    assert json.loads(target.read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]

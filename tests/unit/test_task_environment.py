"""What a task is handed of the runner's environment, what is masked in its output, and which commands a runner
runs."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from coherence_network.contract import Task
from coherence_network.settings import Settings
from coherence_network.task_env import SecretMask, build_argv, task_environment
from coherence_network.telegram.botapi import secret_path, webhook_secret


def settings(tmp_path: Path, **values: Any) -> Settings:
    return Settings(coherence_home=tmp_path / "home", **values)


def test_credentials_are_removed_unless_passed_through_and_the_projects_own_never_pass(tmp_path: Path) -> None:
    conf = settings(tmp_path, coherence_api_token="api-token-0123456789", database_url="sqlite:////x/db.sqlite",
                    coherence_task_env_passthrough=" gh_token , ANTHROPIC_API_KEY,COHERENCE_API_TOKEN,DATABASE_URL")
    environ = {
        "PATH": "/usr/bin", "LANG": "C.UTF-8", "COHERENCE_HOME": "var",
        "COHERENCE_API_TOKEN": "api-token-0123456789", "coherence_api_token": "api-token-0123456789",
        "TELEGRAM_BOT_TOKEN": "1:bot", "TELEGRAM_WEBHOOK_SECRET": "hook", "DATABASE_URL": "sqlite:////x/db.sqlite",
        "AWS_SECRET_ACCESS_KEY": "aws", "PGPASSWORD": "pg", "MY_PRIVATE_KEY": "pk", "SOME_CREDENTIALS": "c",
        "OPENAI_API_KEY": "o", "GH_TOKEN": "gh", "ANTHROPIC_API_KEY": "a", "COPY_OF_IT": "api-token-0123456789",
    }
    env = task_environment(conf, environ).env
    assert env == {"PATH": "/usr/bin", "LANG": "C.UTF-8", "COHERENCE_HOME": "var", "GH_TOKEN": "gh",
                   "ANTHROPIC_API_KEY": "a"}


def test_known_values_are_masked_passed_or_not(tmp_path: Path) -> None:
    conf = settings(tmp_path, telegram_bot_token="123456:bot-token-abcdef",
                    database_url="postgresql://app:p%40ssword-123@db/app", coherence_task_env_passthrough="GH_TOKEN")
    environ = {"GH_TOKEN": "gh-token-0123456789", "AWS_SECRET_ACCESS_KEY": "aws-secret-9876543210",
               "SHORT_TOKEN": "abc", "HOME": "/home/operator-long-enough"}
    mask = task_environment(conf, environ).mask
    line = ("bot=123456:bot-token-abcdef gh=gh-token-0123456789 aws=aws-secret-9876543210 url="
            "postgresql://app:p%40ssword-123@db/app pw=p@ssword-123 abc home=/home/operator-long-enough\n")
    assert mask(line) == "bot=*** gh=*** aws=*** url=*** pw=*** abc home=/home/operator-long-enough\n"


def test_the_generated_webhook_secret_is_masked(tmp_path: Path) -> None:
    conf = settings(tmp_path)
    secret_path(conf).parent.mkdir(parents=True)
    secret_path(conf).write_text("generated-webhook-secret-0123\n")
    assert task_environment(conf, {}).mask("x generated-webhook-secret-0123 y") == "x *** y"


def test_a_secret_inside_another_is_masked_whole() -> None:
    mask = SecretMask(["token-0123456789", "prefix-token-0123456789-suffix", "short"])
    assert mask("a prefix-token-0123456789-suffix b token-0123456789 short") == "a *** b *** short"
    assert SecretMask([])("nothing to mask") == "nothing to mask"


def test_a_variable_holding_a_secret_within_a_longer_value_is_never_passed(tmp_path: Path) -> None:
    conf = settings(tmp_path, coherence_api_token="api-token-0123456789",
                    database_url="postgresql://app:db-password-123@db/app",
                    coherence_task_env_passthrough="HEADER_TOKEN")
    environ = {
        "LEAKY_HEADER": "Authorization: Bearer api-token-0123456789", "HEADER_TOKEN": "Bearer api-token-0123456789",
        "REPORTS_DSN": "postgresql://reports:db-password-123@other/reports", "QUOTED": "p=db-password-123;",
        "SHORT": "app", "PLAIN": "an ordinary value",
    }
    assert task_environment(conf, environ).env == {"SHORT": "app", "PLAIN": "an ordinary value"}


def test_the_secrets_of_the_runners_own_environment_count_too(tmp_path: Path) -> None:
    """A runner handed a secret only in its environment (not in the Settings it was given) drops what holds it."""
    environ = {"DATABASE_URL": "postgresql://app:db-password-123@db/app", "COPY": "x db-password-123 y", "A": "b"}
    assert task_environment(settings(tmp_path), environ).env == {"A": "b"}


@pytest.mark.parametrize(("allowed", "task_type", "refused"), [
    ("run", "review", ("a review task may not carry a command: COHERENCE_COMMAND_TASK_TYPES allows commands only for "
                       "run tasks")),
    ("none", "run", "commands are turned off (COHERENCE_COMMAND_TASK_TYPES='none')"),
    ("", "run", "commands are turned off"),
    ("run,review", "review", None),
])
def test_a_runner_runs_a_command_only_for_the_types_its_setting_allows(
        tmp_path: Path, allowed: str, task_type: str, refused: str | None) -> None:
    now = datetime.now(UTC)
    task = Task.model_validate({"id": 7, "task_type": task_type, "status": "running", "direction": "d",
                                "command": "sh -c id", "created_at": now, "updated_at": now})
    conf = settings(tmp_path, coherence_command_task_types=allowed, coherence_agent_command="agent {prompt_file}")
    if refused is None:
        assert build_argv(task, conf, tmp_path) == ["sh", "-c", "id"]
        return
    with pytest.raises(ValueError, match=re.escape(refused)):
        build_argv(task, conf, tmp_path)


def test_an_unknown_command_type_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="unknown task types"):
        settings(tmp_path, coherence_command_task_types="run,shell")


def test_with_a_token_the_webhook_secret_is_derived_and_no_file_holds_it(tmp_path: Path) -> None:
    conf = settings(tmp_path, coherence_api_token="api-token-0123456789")
    secret = webhook_secret(conf, create=True)
    assert secret == webhook_secret(settings(tmp_path, coherence_api_token="api-token-0123456789"))
    assert re.fullmatch(r"[A-Za-z0-9_-]{32,256}", secret) and "api-token" not in secret
    assert secret != webhook_secret(settings(tmp_path, coherence_api_token="another-token-0123456789"))
    assert not secret_path(conf).exists()

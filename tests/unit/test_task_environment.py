"""What a task is handed of the runner's environment, and what is masked in its output."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from coherence_network.runner import SecretMask, task_environment
from coherence_network.settings import Settings
from coherence_network.telegram import secret_path


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

"""The real Claude Code CLI for the real-agent tests: where it is installed, and the environment that points it at a
scripted model server on 127.0.0.1 instead of Anthropic.

.ci/run installs it from npm into ``$XDG_CACHE_HOME/coherence/claude-code-<version>`` (default ``~/.cache``) and
puts its bin folder first on PATH; docs/RUNBOOK.md#coding-agents says the same command. Missing, it fails the test
in CI and skips it elsewhere (tests/support/required.py).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tests.support.required import missing

INSTALL = ".ci/run installs it: npm install --prefix ~/.cache/coherence/claude-code-<version> @anthropic-ai/claude-code"


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "coherence"


def find_claude() -> Path | None:
    """``claude`` on PATH, else the newest install .ci/run made in the cache."""
    on_path = shutil.which("claude")
    if on_path:
        return Path(on_path)
    installed = sorted(cache_dir().glob("claude-code-*/node_modules/.bin/claude"), key=lambda p: p.stat().st_mtime)
    return installed[-1] if installed else None


def claude_or_missing() -> Path:
    """The installed ``claude``; a test without it fails in CI and is skipped elsewhere, saying how to install it."""
    found = find_claude()
    if found is None:
        missing(f"Claude Code is not installed (no `claude` on PATH or in {cache_dir()}); {INSTALL}")
    assert found is not None
    return found


def claude_env(environ: dict[str, str], claude: Path, model_url: str, home: Path) -> dict[str, str]:
    """``environ`` for a runner that starts ``claude`` against the scripted model at ``model_url``: no Anthropic or
    Claude setting of the machine's (a real key, another endpoint, a config folder), an empty HOME of the test's,
    no telemetry, update check or other traffic, no proxy for 127.0.0.1, and the test key passed on to the agent
    (COHERENCE_TASK_ENV_PASSTHROUGH: a variable named like a credential reaches a task only when named there)."""
    home.mkdir(parents=True, exist_ok=True)
    kept = {k: v for k, v in environ.items() if not k.upper().startswith(("ANTHROPIC_", "CLAUDE_"))}
    return {
        **kept, "PATH": f"{claude.parent}{os.pathsep}{environ.get('PATH', '')}", "HOME": str(home),
        "COHERENCE_AGENT": "claude", "ANTHROPIC_BASE_URL": model_url, "ANTHROPIC_API_KEY": "sk-test-scripted-model",
        "COHERENCE_TASK_ENV_PASSTHROUGH": "ANTHROPIC_API_KEY", "DISABLE_TELEMETRY": "1", "DISABLE_AUTOUPDATER": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }

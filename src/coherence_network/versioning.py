"""Which code is running: package version and the git commit of the source tree it was loaded from."""

from __future__ import annotations

import subprocess
from functools import lru_cache
from pathlib import Path

from coherence_network import __version__

SOURCE_DIR = Path(__file__).resolve().parent


def _git(*args: str, cwd: Path = SOURCE_DIR) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def source_sha_on_disk(source_dir: Path = SOURCE_DIR) -> str | None:
    """The newest commit that changed the package's own source (not the workspace the pipeline edits)."""
    return _git("log", "-1", "--format=%H", "--", ".", cwd=source_dir) or None


@lru_cache(maxsize=1)
def running_version() -> dict[str, str | None]:
    """Version of the code in this process, captured once at first use (normally at start-up)."""
    return {"version": __version__, "git_sha": source_sha_on_disk()}

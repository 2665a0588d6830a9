"""A generated secret under var/run/ is the same for every process that asks, however they race."""

from __future__ import annotations

import stat
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from coherence_network.logfiles import shared_secret


def test_racing_processes_all_get_the_one_secret_written_once(tmp_path: Path) -> None:
    path = tmp_path / "run" / "console_session_key"
    with ProcessPoolExecutor(max_workers=8) as pool:
        got = set(pool.map(shared_secret, [path] * 32))
    assert len(got) == 1 and len(got.pop()) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["console_session_key"]  # no temp file left behind


def test_a_stored_secret_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text("kept-secret\n")
    assert shared_secret(path) == "kept-secret"

"""One writer per log file: the registry names it, only the registry's ``open_log`` opens a log, once per process.

Two processes (or two handlers) writing one file each rotate it on their own, so one renames the file from under
the other and lines are lost or land in a rotated file. The webhook's lines once went to telegram.log from the API
process beside the bot's own, and auto-commit opened commit_progress.log with a handler of its own; the real
processes are checked in tests/integration/test_telegram.py (test_webhook_needs_the_secret)."""

from __future__ import annotations

from pathlib import Path

from coherence_network.logfiles import REGISTRY, RotateWhenFull, open_log
from coherence_network.settings import Settings

SRC = Path(__file__).resolve().parents[2] / "src" / "coherence_network"


def test_every_log_names_one_writer() -> None:
    logs = [f for f in REGISTRY.values() if f.kind == "log"]
    assert logs and all(f.writer for f in logs)
    for log_file in logs:  # a component's own log takes everything its process logs; other logs one logger each
        assert (log_file.logger == "") == (log_file.name == f"{log_file.writer}.log"), log_file
    assert len({(f.writer, f.logger) for f in logs}) == len(logs)
    assert REGISTRY["telegram.log"].writer == "telegram" and REGISTRY["commit_progress.log"].writer == "supervisor"


def test_only_the_registry_opens_a_log_file() -> None:
    opening = sorted(str(p.relative_to(SRC)) for p in SRC.rglob("*.py") if "FileHandler" in p.read_text())
    assert opening == ["logfiles.py"]


def test_a_log_is_opened_once_per_process(tmp_path: Path) -> None:
    settings = Settings(coherence_home=tmp_path)
    entry = REGISTRY["commit_progress.log"]
    logger = open_log(entry, settings)
    try:
        assert open_log(entry, settings) is logger
        path = str(entry.path(settings))
        assert [getattr(h, "baseFilename", None) for h in logger.handlers].count(path) == 1
        logger.info("written once")
        assert Path(path).read_text().count("written once") == 1
    finally:
        for handler in [h for h in logger.handlers if getattr(h, "baseFilename", None) == str(entry.path(settings))]:
            logger.removeHandler(handler)
            handler.close()


# One of several processes sharing a log (the API's workers): it appends through open_log(rotate=False), then says
# how many lines it wrote.
_APPENDER = """
import logging, sys
from pathlib import Path
from coherence_network.logfiles import REGISTRY, RotateWhenFull, open_log
from coherence_network.settings import Settings
logger = open_log(REGISTRY["api.log"], Settings(coherence_home=Path(sys.argv[1])), rotate=False)
logger.setLevel(logging.INFO)
for n in range(int(sys.argv[2])):
    logger.info("writer %s line %d", sys.argv[3], n)
"""


def test_a_shared_log_has_one_rotator_and_loses_no_line(tmp_path: Path) -> None:
    """Two appending processes and one RotateWhenFull rotating under them: every line is in api.log or one of its
    rotated files, once."""
    import subprocess
    import sys

    settings = Settings(coherence_home=tmp_path)
    path = REGISTRY["api.log"].path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    rotator = RotateWhenFull(path, max_bytes=20_000, backups=1000)
    lines = 3000
    writers = [subprocess.Popen([sys.executable, "-c", _APPENDER, str(tmp_path), str(lines), name])
               for name in ("a", "b")]
    rotations = 0
    while any(w.poll() is None for w in writers):
        rotations += rotator.rotate_if_full()
    assert [w.wait() for w in writers] == [0, 0]
    written = [line.rsplit(": ", 1)[-1] for f in path.parent.glob("api.log*") for line in f.read_text().splitlines()]
    assert rotations > 1, "the writers were too fast to rotate under"
    assert sorted(written) == sorted(f"writer {w} line {n}" for w in "ab" for n in range(lines))

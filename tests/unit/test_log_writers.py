"""One writer per log file: the registry names it, only the registry's ``open_log`` opens a log, once per process.

Two processes (or two handlers) writing one file each rotate it on their own, so one renames the file from under
the other and lines are lost or land in a rotated file. The webhook's lines once went to telegram.log from the API
process beside the bot's own, and auto-commit opened commit_progress.log with a handler of its own; the real
processes are checked in tests/integration/test_telegram.py (test_webhook_needs_the_secret)."""

from __future__ import annotations

from pathlib import Path

from coherence_network.logfiles import REGISTRY, open_log
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

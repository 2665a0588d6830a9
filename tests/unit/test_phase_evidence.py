"""What a phase must leave: the verdict rule both the runner and the project manager read, and the globs a phase's
commit must touch."""

from __future__ import annotations

from pathlib import Path

from coherence_network.phase_evidence import change_shortfall, missing_globs, required_globs, verdict
from coherence_network.settings import Settings


def test_the_last_verdict_line_counts() -> None:
    assert verdict("VERDICT: fail\nfixed\n  verdict: PASS.\n") == "pass"
    assert verdict("the VERDICT: pass is not at the start of a line\nVERDICT: maybe") is None
    assert verdict(None) is None


def test_globs_per_phase_from_the_settings() -> None:
    settings = Settings(_env_file=None, coherence_home=Path("/nonexistent"),
                        coherence_phase_paths_test=" tests/* , *_test.py,")
    assert required_globs(settings, "test") == ["tests/*", "*_test.py"]
    assert required_globs(settings, "impl") == [] and required_globs(settings, "review") == []


def test_a_change_counts_only_with_files_matching_every_glob() -> None:
    assert missing_globs(["tests/*", "docs/*.md"], ["tests/unit/test_a.py", "src/a.py"]) == ["docs/*.md"]
    assert change_shortfall("impl", ["src/a.py"], []) is None
    assert "made no commit with a diff" in (change_shortfall("spec", [], []) or "")
    said = change_shortfall("test", ["src/a.py"], ["tests/*"]) or ""
    assert "touched no file matching tests/*" in said and "COHERENCE_PHASE_PATHS_TEST" in said and "src/a.py" in said

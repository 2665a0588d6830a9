"""Shared by the scripts in this folder: run a `coherence` command with the project's venv.

The scripts are what the runbook names; they start with `#!/usr/bin/env python3`, so an operator may run them with
any Python. When that Python lacks the package, re-run the script with `.venv/bin/python` (created by `make`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

VENV = Path(__file__).resolve().parent.parent / ".venv"


def hand_over(*command: str) -> None:
    """Run ``coherence <command> <the script's arguments>``; exits with the command's exit code. Usage and errors
    name the script (``report_fatal.py [OPTIONS]``), not the command it hands over to."""
    try:
        import typer

        from coherence_network.cli import app
        from coherence_network.settings import config_errors_as_one_line
    except ImportError:
        python = VENV / "bin" / "python"
        if python.exists() and Path(sys.prefix).resolve() != VENV.resolve():
            os.execv(str(python), [str(python), *sys.argv])
        sys.exit("coherence_network is not installed: run `make test` or `make run` once to create .venv")
    target = typer.main.get_command(app)
    for name in command:  # e.g. ("index", "npm"): down the command groups to the command itself
        target = target.commands[name]  # type: ignore[attr-defined]
    with config_errors_as_one_line(Path(sys.argv[0]).name):
        target.main(sys.argv[1:], prog_name=Path(sys.argv[0]).name)

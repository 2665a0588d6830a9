"""``python -m coherence_network.cli.supervised COMPONENT PARENT ARGS``: how the supervisor starts each child.

The child runs ``coherence ARGS`` as the single instance of COMPONENT (``pidfiles.run_as``: it takes the lock and
owns its PID file, whatever command it runs) and ends when its supervisor, pid PARENT, dies. It lives here, beside
the CLI it runs, so that pidfiles knows nothing of the CLI (the CLI imports pidfiles, never the other way round).
"""

from __future__ import annotations

import sys

from coherence_network.cli.app import main
from coherence_network.pidfiles import run_as


def run_supervised(argv: list[str]) -> None:
    """``argv``: COMPONENT PARENT ARGS, as the supervisor gives them."""
    run_as(argv[0], main, argv[2:], parent=int(argv[1]))


if __name__ == "__main__":
    run_supervised(sys.argv[1:])

"""``python -m coherence_network.cli ARGS``: the same as ``coherence ARGS``."""

from coherence_network.cli import main

main()

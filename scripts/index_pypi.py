#!/usr/bin/env python3
"""Index PyPI packages into the dependency graph (`coherence index pypi`)."""

from _handover import hand_over

hand_over("index", "pypi")

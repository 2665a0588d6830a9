#!/usr/bin/env python3
"""Index npm packages into the dependency graph (`coherence index npm`)."""

from _handover import hand_over

hand_over("index", "npm")

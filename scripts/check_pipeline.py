#!/usr/bin/env python3
"""Pipeline status in layers, or one task (`coherence status`)."""

from _handover import hand_over

hand_over("status")

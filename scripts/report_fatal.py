#!/usr/bin/env python3
"""Fatal issues: components the supervisor could not keep running (`coherence fatal`)."""

from _handover import hand_over

hand_over("fatal")

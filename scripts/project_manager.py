#!/usr/bin/env python3
"""Project manager: backlog items -> phased tasks (`coherence pm`)."""

from _handover import hand_over

hand_over("pm")

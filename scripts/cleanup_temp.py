#!/usr/bin/env python3
"""Remove old task logs of finished tasks (`coherence cleanup`)."""

from _handover import hand_over

hand_over("cleanup")

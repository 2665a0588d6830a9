#!/usr/bin/env python3
"""Agent runner (`coherence runner`): claims tasks from the API and runs them."""

from _handover import hand_over

hand_over("runner")

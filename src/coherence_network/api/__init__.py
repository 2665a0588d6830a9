"""The HTTP API: the single source of truth for agent tasks."""

from coherence_network.api.app import create_app

__all__ = ["create_app"]

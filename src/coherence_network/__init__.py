"""Coherence Network: an autonomous spec-driven development pipeline and a package dependency graph."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("coherence-network")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

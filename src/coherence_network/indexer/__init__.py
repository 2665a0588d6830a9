"""Indexers: registry discovery, npm and PyPI adapters and the breadth-first crawl into the graph tables."""

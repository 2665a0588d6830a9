"""The HTTP API: the single source of truth for agent tasks. The app is built by ``api.app.create_app``.

This package imports nothing itself: the console's routes import API modules while ``api.app`` imports the console,
so a re-export of ``create_app`` here made ``import coherence_network.console.routes`` fail when it came first.
"""

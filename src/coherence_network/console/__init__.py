"""The ops console: server-rendered pages of the API process (see DESIGN.md section 7).

Pages, forms and the little JavaScript that keeps them live call the same store methods and contract rules as the
JSON API, so a move the API refuses is refused here with the same message."""

# The console's paths: the request guard lets these through to the console, which checks its own session.
PAGE_PREFIXES = ("/tasks", "/decisions", "/graph", "/signin", "/signout", "/restart", "/pauses", "/console-static",
                 "/audit")


def is_console_path(path: str) -> bool:
    """True for the overview ("/") and every page, form target and static file of the console."""
    return path == "/" or any(path == p or path.startswith(p + "/") for p in PAGE_PREFIXES)

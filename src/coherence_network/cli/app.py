"""The ``coherence`` Typer app, the switches given before a command, and the entry point.

Each group of verbs lives in a module of its own in this package and registers its commands on ``app`` when it is
imported (the package's ``__init__`` imports them all). Exit codes: 0 healthy / done, 1 needs attention or failed,
2 usage error.
"""

from __future__ import annotations

import typer

from coherence_network.settings import config_errors_as_one_line

HELP_WIDTH = 120

app = typer.Typer(
    help="Coherence Network: the autonomous pipeline's API, runner, manager, monitor, supervisor and indexers.",
    no_args_is_help=True,
    add_completion=True,  # coherence --install-completion (bash, zsh, fish, PowerShell)
    rich_markup_mode=None,  # plain help: it wraps long defaults instead of cutting them at 80 columns
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": HELP_WIDTH},
)


class Options:
    """Switches given before the command (``coherence --log-json api``)."""

    log_json: bool | None = None


@app.callback()
def global_options(
    log_json: bool = typer.Option(False, "--log-json", help="Write component logs as JSON lines"),
) -> None:
    Options.log_json = True if log_json else None


def main(argv: list[str] | None = None) -> None:
    """The entry point (console script, ``python -m``, supervised children): a bad setting is one line, exit 2."""
    with config_errors_as_one_line():
        app(argv, prog_name="coherence")

"""The ``coherence`` command line: every operator command lives in this package (scripts/ only hand over to it).

``app`` is the Typer app (``app.py``); each module here holds one group of verbs and registers them on it when
imported; ``coherence --help`` lists them in this order:

- ``ops``: version, config, migrate, restart, stop, fatal, doctor (setting up, stopping, diagnosing);
- ``server``: api (the uvicorn server, its lock and fast failures);
- ``components``: runner, pm, telegram, monitor, supervise (the long-running components);
- ``tasks``: status, tasks, task, logs, decide, retry, create (tasks and decisions, through the API);
- ``steering``: pause, resume (holding the pipeline or a task type, through the API);
- ``bulk``: bulk cancel|retry (many tasks by a filter, previewed first, through the API);
- ``policies``: policy, policy set (each task type's limit, retry delays and breaker, through the API);
- ``costs``: caps, caps set, spend (cost caps and what agents reported using, through the API);
- ``retention``: cleanup, prune (removing what is old);
- ``audit``: audit (the audit trail of operators' actions, through the API);
- ``items``: item, items (backlog items with their phase tasks, commits and decisions, through the API);
- ``index``: the indexers' sub-app (coherence_network.indexer.cli).

Beside them: ``startup`` (the start-up the long-running components share), ``api_access`` (the API client of an
operator's command, its errors as one line and an exit code), ``supervised`` (how the supervisor runs each child)
and ``__main__`` (``python -m coherence_network.cli``).
"""

# The command modules are imported in the order `coherence --help` lists their commands.
# isort: off
from coherence_network.cli import ops
from coherence_network.cli import server
from coherence_network.cli import components
from coherence_network.cli import tasks
from coherence_network.cli import steering
from coherence_network.cli import bulk
from coherence_network.cli import policies
from coherence_network.cli import costs
from coherence_network.cli import retention
from coherence_network.cli import audit
from coherence_network.cli import items
# isort: on
from coherence_network.cli.app import app, main
from coherence_network.indexer.cli import index_app

app.add_typer(index_app, name="index", help="Index npm or PyPI packages into the dependency graph (--target, --limit).")

__all__ = ["app", "audit", "bulk", "components", "costs", "items", "main", "ops", "policies", "retention", "server",
           "steering", "tasks"]

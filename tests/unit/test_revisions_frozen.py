"""Schema history is append-only: a revision that has run anywhere is never edited, and imports no live code.

A store records only a revision id; if the file behind that id changes, stores that ran the old text and stores
that run the new one differ while both say the same revision. So each file's sha256 is pinned here.
"""

from __future__ import annotations

import ast
import hashlib

from coherence_network.store.db import MIGRATIONS_DIR

VERSIONS = MIGRATIONS_DIR / "versions"
# sha256 of every revision file. Append a line for a new revision; never change a line.
FROZEN = {
    "0001_tasks.py": "27c4c48b88af5c6acadd02910e5365563c34dfbaa5c3d9698ca105fecfa37add",
    "0003_components.py": "fe7d79b7ee57b45c8b25eb3bcaca239b5ef3a3d04d456d1494e1ba8515c438dc",
    "0004_ops_issues.py": "f76ae6e74eaf579f35227412b8c03fccc5e73547a48770aa7ec3f32fc0349113",
    "0005_graph.py": "34159b7c316738f025b3714e9220a1d7405499bb66dc99ca92dabe1ff7626094",
    "0006_task_contract.py": "c8155c06b4407461615ff988d99253a85fc39eda001476c253837e92a206d520",
    "0007_run_durations.py": "58275bb27532bce2d7dbb89b742c4848d82ff88e123cb5d39968e2830c3f5a55",
    "0008_status_list_index.py": "53bb1d25621e35fb4fe2efc95a7c0d16cc9eff8bba5942ff02eddcf92ff487ee",
    "0009_task_search.py": "63b37ea59b5c268e5e4b792c2648b74b9517ad6fd925220d7d00ab0cce98af0f",
    "0010_monitor_issues_by_host.py": "1140e0ecff6ba8fb065c9d7dc226d208b3dd1d010e473b31f0657891b70c7424",
    "0011_pauses.py": "7ca4998e3a06960062614a23d6c292ba36f607c259fa71297681b1dca72e1baa",
    "0012_steering.py": "a3cd7d77d3cdfc72fc830d42b032d152dcf1ce1135dbe74ed4b78408d8e8d192",
    "0013_retries.py": "4acd945fe35c4dd59576a79e5ed5856f93e6c40d699bbc9aafa46e6e74996276",
    "0014_agents.py": "3d5a7c9a0bddeb54478b39080601987c4a7c786576e37a23ac69442b24bc8d5f",
    "0015_costs.py": "e3396280a2ed07ca4a404bc4ec10c50ddd9409fcc6e0cb68cf1d5cad73cc0156",
    "0016_task_hours.py": "a5ae7ed0207c07210c39c12fc9eba0a588ba7a5c9b306d90bbe6492a87927336",
    "0017_fewer_task_indexes.py": "a2123b410af15216f7afbb23a82fc1ec389427a0f6e44c53eaeadedf89b3629d",
    "0018_task_hours_triggers.py": "feb56688a239361b14218e7e6c318dcc533e3cb69a33e089c322f82b315ae0f1",
    "0019_partial_task_indexes.py": "27b0d7bdd82f844f5e405e4edb83ea57c79e8d25dae89eebc1b37717b032edc4",
}


def test_no_revision_is_edited() -> None:
    found = {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in VERSIONS.glob("*.py")}
    edited = sorted(name for name, digest in found.items() if name in FROZEN and FROZEN[name] != digest)
    assert not edited, (
        f"{edited} changed after it was applied somewhere: revert it and add a new revision instead "
        "(stores already at that revision would never see the change)"
    )
    missing = sorted(set(FROZEN) - set(found))
    assert not missing, f"{missing} removed or renamed: stores at that revision could no longer upgrade"
    unrecorded = {name: digest for name, digest in found.items() if name not in FROZEN}
    assert not unrecorded, f"new revision(s): once final, record them in FROZEN: {unrecorded}"


def test_no_revision_imports_live_code() -> None:
    """A revision must keep meaning what it meant when it ran, so it copies what it needs (types, value lists)."""
    offenders = []
    for path in sorted(VERSIONS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            offenders += [f"{path.name}: {m}" for m in modules if m.split(".")[0] == "coherence_network"]
    assert not offenders, f"revisions import live code that can change under them: {offenders}"

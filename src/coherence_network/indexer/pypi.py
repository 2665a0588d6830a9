"""PyPI adapter: JSON API documents (``GET {base}pypi/{name}/json``) to project records.

Edges come from ``info.requires_dist`` of the latest release. A requirement under an extra or an environment
marker is an optional edge (it applies only on some installs); the rest are runtime edges.
"""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import quote

from packaging.requirements import InvalidRequirement, Requirement

from coherence_network.contract import Ecosystem, ProjectStatus
from coherence_network.indexer.metadata import MalformedMetadata, first_text, merge_edges, text_field
from coherence_network.store.graph import Dependency, PackageRecord

ECOSYSTEM = Ecosystem.PYPI
_VALID = re.compile(r"^([A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9])$", re.IGNORECASE)  # PEP 508 names
_HOMEPAGE_KEYS = ("homepage", "home", "home page", "home-page", "source", "repository")
log = logging.getLogger("coherence.indexer.pypi")


def normalize(name: str) -> str | None:
    """PEP 503: lowercase, runs of ``-``, ``_`` and ``.`` become one ``-``; None when not a valid name."""
    name = name.strip()
    return re.sub(r"[-_.]+", "-", name).lower() if _VALID.match(name) else None


def document_url(base: str, name: str) -> str:
    return f"{base}pypi/{quote(name)}/json"


def _homepage(info: dict[str, Any]) -> str | None:
    if text_field(info.get("home_page")) and info["home_page"].strip() != "UNKNOWN":
        return text_field(info["home_page"])
    urls = info.get("project_urls")
    if isinstance(urls, dict):
        by_label = {str(label).strip().lower(): url for label, url in urls.items()}
        for key in _HOMEPAGE_KEYS:
            if text_field(by_label.get(key)):
                return text_field(by_label[key])
    return text_field(info.get("project_url"))


def _license(info: dict[str, Any]) -> str | None:
    for value in (info.get("license_expression"), info.get("license")):
        text = first_text(value, 255)
        if text and text != "UNKNOWN":
            return text
    classifiers = info.get("classifiers")
    if isinstance(classifiers, list):
        for classifier in classifiers:
            if isinstance(classifier, str) and classifier.startswith("License ::"):
                return classifier.rsplit("::", 1)[-1].strip()[:255]
    return None


def _edge(package: str, line: str) -> Dependency | None:
    try:
        requirement = Requirement(line)
    except InvalidRequirement as exc:
        log.warning("%s: skipping unparsable requirement %r (%s)", package, line, exc)
        return None
    target = normalize(requirement.name)
    if target is None:
        return None
    extras = f"[{','.join(sorted(requirement.extras))}]" if requirement.extras else ""
    text = f"{extras}{requirement.specifier}" + (f"; {requirement.marker}" if requirement.marker else "")
    return Dependency(target, text, "optional" if requirement.marker else "runtime")


def parse(name: str, document: Any) -> PackageRecord:
    """A project record from a JSON API document; MalformedMetadata when its shape is not PyPI's."""
    info = document.get("info") if isinstance(document, dict) else None
    if not isinstance(info, dict) or not isinstance(info.get("version"), str):
        raise MalformedMetadata("no info object with a version")
    requires = info.get("requires_dist") or []
    if not isinstance(requires, list) or not all(isinstance(line, str) for line in requires):
        raise MalformedMetadata("info.requires_dist is not a list of strings")
    edges = [edge for edge in (_edge(name, line) for line in requires) if edge is not None and edge.name != name]
    return PackageRecord(
        name,
        ProjectStatus.OK,
        version=first_text(info["version"], 255),
        description=text_field(info.get("summary")),
        license=_license(info),
        homepage=_homepage(info),
        dependencies=merge_edges(edges, optional_wins=False),
    )

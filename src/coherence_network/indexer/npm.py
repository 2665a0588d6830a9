"""npm adapter: package documents (``GET {registry}/{name}``) to project records.

The latest version is ``dist-tags.latest``; its manifest's ``dependencies`` are runtime edges,
``optionalDependencies`` optional (npm lets them override a runtime entry of the same name) and ``devDependencies``
dev edges, which are stored but not crawled.
"""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import quote

from coherence_network.contract import Ecosystem, ProjectStatus
from coherence_network.indexer.metadata import MalformedMetadata, first_text, merge_edges, text_field
from coherence_network.store.graph import Dependency, PackageRecord

ECOSYSTEM = Ecosystem.NPM
# Lowercase and legacy mixed-case names, optionally scoped; no spaces, no leading dot or underscore.
_NAME = re.compile(r"^(?:@[A-Za-z0-9][\w.~-]*/)?[A-Za-z0-9][\w.~-]*$")
_KINDS = (("dependencies", "runtime"), ("optionalDependencies", "optional"), ("devDependencies", "dev"))
log = logging.getLogger("coherence.indexer.npm")


def normalize(name: str) -> str | None:
    """The name as the registry knows it, or None when it cannot be an npm package name."""
    name = name.strip()
    return name if len(name) <= 214 and _NAME.match(name) else None


def document_url(base: str, name: str) -> str:
    """``@scope/name`` is requested as ``@scope%2Fname``."""
    return base + quote(name, safe="@")


def _license(manifest: dict[str, Any]) -> str | None:
    value = manifest.get("license")
    if isinstance(value, dict):
        value = value.get("type")
    if value is None and isinstance(manifest.get("licenses"), list) and manifest["licenses"]:
        legacy = manifest["licenses"][0]
        value = legacy.get("type") if isinstance(legacy, dict) else legacy
    return first_text(value, 255)


def _target(name: str, requirement: str) -> str:
    """An alias (``"x": "npm:real@^1"``) depends on the real package."""
    if not requirement.startswith("npm:"):
        return name
    spec = requirement.removeprefix("npm:")
    at = spec.rfind("@")  # a version follows the last "@" unless that "@" starts a scope
    return (spec[:at] if at > 0 else spec) or name


def parse(name: str, document: Any) -> PackageRecord:
    """A project record from a package document; MalformedMetadata when its shape is not npm's."""
    if not isinstance(document, dict):
        raise MalformedMetadata("document is not a JSON object")
    versions = document.get("versions")
    if not versions and isinstance(document.get("time"), dict) and "unpublished" in document["time"]:
        return PackageRecord(name, ProjectStatus.MISSING, error="unpublished")
    tags = document.get("dist-tags")
    latest = tags.get("latest") if isinstance(tags, dict) else None
    if not isinstance(latest, str) or not isinstance(versions, dict):
        raise MalformedMetadata("no dist-tags.latest or versions")
    manifest = versions.get(latest)
    if not isinstance(manifest, dict):
        raise MalformedMetadata(f"latest version {latest!r} is not in versions")
    edges: list[Dependency] = []
    for key, kind in _KINDS:
        entries = manifest.get(key) or {}
        if not isinstance(entries, dict):
            raise MalformedMetadata(f"{key} is not an object")
        for dep_name, requirement in entries.items():
            target = normalize(_target(dep_name, str(requirement)))
            if target is None:
                log.warning("%s: skipping dependency with an invalid name %r", name, dep_name)
                continue
            edges.append(Dependency(target, str(requirement), kind))
    return PackageRecord(
        name,
        ProjectStatus.OK,
        version=first_text(latest, 255),
        description=text_field(manifest.get("description") or document.get("description")),
        license=_license(manifest),
        homepage=text_field(manifest.get("homepage") or document.get("homepage")),
        dependencies=merge_edges(edges, optional_wins=True),
    )

"""Registry discovery: where each ecosystem's own configuration says its registry is.

No registry address is built in. npm is asked (``npm config get registry``, which reads its environment variables
and npmrc files); without npm, the variables and npmrc files npm reads are read here. PyPI's address is pip's
``index-url`` (``PIP_INDEX_URL``, or the pip configuration files as ``pip config debug`` lists them, in pip's order
of precedence), else the default the installed pip itself says it uses (``pip download --help``): pip is asked
through its command line, never through its internals. The environment read here is npm's and pip's, not this
project's, which is why it is not part of Settings.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from coherence_network.errors import CoherenceError

NPM_TIMEOUT_SECONDS = 15.0


class RegistryError(CoherenceError):
    """No usable registry address: the operator must configure one or pass --registry."""


@dataclass(frozen=True)
class Registry:
    """A registry's base address for requests, and where that address came from (shown in summaries)."""

    ecosystem: str
    base: str
    source: str

    @property
    def display(self) -> str:
        """The address without any user:password part, for logs."""
        parts = urlsplit(self.base)
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def checked_url(url: str, what: str) -> str:
    """An http(s) URL with a host, ending in one slash; anything else is a usage error."""
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RegistryError(f"{what} {url!r} is not an http(s) URL; pass --registry http(s)://HOST/...")
    return url.rstrip("/") + "/"


def pypi_json_base(index_url: str) -> str:
    """The JSON API base beside a simple index: ``.../simple/`` -> ``.../`` (documents at ``pypi/{name}/json``)."""
    url = checked_url(index_url, "PyPI index URL")
    trimmed = url.rstrip("/")
    for suffix in ("/simple", "/pypi"):
        if trimmed.endswith(suffix):
            return trimmed.removesuffix(suffix) + "/"
    return url


# --- npm ---------------------------------------------------------------------------------------------------
def _npmrc_registry(path: Path) -> str | None:
    """The ``registry=`` line of one npmrc file (ini-like key=value; ';' and '#' start comments)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return None
    value = None
    for line in text.splitlines():
        key, sep, rest = line.strip().partition("=")
        if sep and key.strip() == "registry":
            value = rest.strip().strip("\"'")
    return value or None


def _npm_files(environ: Mapping[str, str], home: Path) -> list[Path]:
    """npmrc files in npm's precedence order: project, user, global."""
    user = Path(environ["npm_config_userconfig"]) if environ.get("npm_config_userconfig") else home / ".npmrc"
    prefix = Path(environ.get("npm_config_prefix") or Path(sys.prefix))
    return [Path.cwd() / ".npmrc", user, prefix / "etc" / "npmrc", Path("/etc/npmrc")]


def discover_npm(environ: Mapping[str, str] | None = None, home: Path | None = None) -> Registry:
    """npm's configured registry: npm itself if installed, else its variables and npmrc files."""
    environ = os.environ if environ is None else environ
    home = Path.home() if home is None else home
    npm = shutil.which("npm", path=environ.get("PATH"))
    if npm:
        try:
            done = subprocess.run([npm, "config", "get", "registry"], capture_output=True, text=True,
                                  timeout=NPM_TIMEOUT_SECONDS, env=dict(environ), stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RegistryError(f"`npm config get registry` failed ({exc}); pass --registry URL") from None
        value = done.stdout.strip().splitlines()[-1].strip() if done.stdout.strip() else ""
        if done.returncode == 0 and value and value != "undefined":
            return Registry("npm", checked_url(value, "npm registry"), "npm config get registry")
    for variable in ("npm_config_registry", "NPM_CONFIG_REGISTRY"):
        if environ.get(variable):
            return Registry("npm", checked_url(environ[variable], "npm registry"), variable)
    for path in _npm_files(environ, home):
        configured = _npmrc_registry(path)
        if configured:
            return Registry("npm", checked_url(configured, f"registry in {path}"), str(path))
    raise RegistryError(
        "no npm registry configured (npm is not installed and neither NPM_CONFIG_REGISTRY nor an npmrc sets "
        "`registry`); configure npm or pass --registry URL"
    )


# --- PyPI --------------------------------------------------------------------------------------------------
PIP_TIMEOUT_SECONDS = 60.0
PIP_PRECEDENCE = ("global", "user", "site", "env")  # pip's configuration variants, lowest precedence first
_PIP_DEFAULT_INDEX = re.compile(r"--index-url <url> Base URL of the Python Package Index \(default (\S+?)\)")


def _pip(args: list[str], environ: Mapping[str, str], home: Path) -> str | None:
    """What ``python -m pip ARGS`` prints, run in the given environment (pip reads its own variables and files);
    None when pip is not installed or fails."""
    env = {**environ, "HOME": str(home), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    try:
        done = subprocess.run([sys.executable, "-m", "pip", *args], env=env, capture_output=True, text=True,
                              timeout=PIP_TIMEOUT_SECONDS, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def pip_config_files(environ: Mapping[str, str], home: Path) -> list[tuple[Path, dict[str, str]]]:
    """pip's configuration files that it loads, lowest precedence first, each with its values
    (``global.index-url``: names as pip normalises them), read from ``pip config debug``."""
    if environ.get("PIP_CONFIG_FILE") == os.devnull:  # pip's documented switch: it loads no file at all
        return []
    listed = _pip(["config", "debug"], environ, home) or ""
    variants: dict[str, list[tuple[Path, dict[str, str]]]] = {}
    current: tuple[Path, dict[str, str]] | None
    variant, current = "", None  # current: the file whose values follow
    for line in listed.splitlines():
        if not line.startswith(" "):  # a variant: "global:", "user:", "site:", "env:", "env_var:"
            variant, current = line.strip().rstrip(":"), None
        elif line.startswith("    ") and current is not None:  # "    section.key: value"
            key, _, value = line.strip().partition(": ")
            current[1][key] = value
        elif ", exists: " in line:  # "  /path/pip.conf, exists: True"
            current = (Path(line.strip().rsplit(", exists: ", 1)[0]), {})
            variants.setdefault(variant, []).append(current)
        else:
            current = None
    return [found for name in PIP_PRECEDENCE for found in variants.get(name, [])]


def _pip_default_index(environ: Mapping[str, str], home: Path) -> str | None:
    """The index pip uses when nothing is configured, as pip's own help says it (so no address is written here)."""
    found = _PIP_DEFAULT_INDEX.search(" ".join((_pip(["download", "--help"], environ, home) or "").split()))
    return found.group(1) if found else None


def _truthy(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


def discover_pypi(environ: Mapping[str, str] | None = None, home: Path | None = None) -> Registry:
    """pip's index-url (``PIP_INDEX_URL``, else the pip configuration file of highest precedence that sets it,
    else pip's own default); the JSON API is beside it. pip configured with no index at all is an error: there is
    nothing to read."""
    environ = os.environ if environ is None else environ
    home = Path.home() if home is None else home
    no_index = _truthy(environ.get("PIP_NO_INDEX", ""))
    if environ.get("PIP_INDEX_URL") and not no_index:
        return Registry("pypi", pypi_json_base(environ["PIP_INDEX_URL"]), "PIP_INDEX_URL")
    found: tuple[str, Path] | None = None
    for path, values in pip_config_files(environ, home):
        for section in ("global", "install"):  # [install] overrides [global] for `pip install`
            if values.get(f"{section}.index-url", "").strip():
                found = (values[f"{section}.index-url"], path)
            if f"{section}.no-index" in values and not environ.get("PIP_NO_INDEX"):
                no_index = _truthy(values[f"{section}.no-index"])
    if no_index:
        raise RegistryError("pip is configured with no index (PIP_NO_INDEX or no-index in a pip configuration "
                            "file); pass --registry URL")
    if found is not None:
        return Registry("pypi", pypi_json_base(found[0]), f"index-url in {found[1]}")
    default = _pip_default_index(environ, home)
    if default is None:
        raise RegistryError(
            "no PyPI index configured (neither PIP_INDEX_URL nor index-url in a pip configuration file, and pip "
            "is not installed to say its default); configure pip or pass --registry URL"
        )
    return Registry("pypi", pypi_json_base(default), "pip's default index")


def discover(ecosystem: str, override: str | None = None, environ: Mapping[str, str] | None = None) -> Registry:
    """The registry to index from: ``override`` (--registry) or the ecosystem's configuration."""
    if override:
        base = pypi_json_base(override) if ecosystem == "pypi" else checked_url(override, "--registry")
        return Registry(ecosystem, base, "--registry")
    return discover_pypi(environ) if ecosystem == "pypi" else discover_npm(environ)

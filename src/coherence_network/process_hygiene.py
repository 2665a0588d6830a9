"""What a component's process shows of its secrets to the processes around it (its tasks above all).

Two leaks this closes, at each long-running component's start-up (``protect``):

- ``/proc/<pid>/environ`` is not ``os.environ``: the kernel shows the memory of the environment block the process
  was started with (between env_start and env_end, fields 50 and 51 of /proc/<pid>/stat), readable by any process
  of the same user. Changing os.environ never alters it. So each secret variable is first set again (``setenv``
  copies it to the heap, and libc's ``environ`` — what children inherit — points at the copy), then its value is
  overwritten with ``*`` in the original block. Children started afterwards (the supervisor's API, uvicorn's
  workers) still get the real values; /proc/<pid>/environ of this process shows only stars.
- The rest of its memory: the process is made non-dumpable (``PR_SET_DUMPABLE`` 0), so a process of the same user
  that is not root may neither read /proc/<pid>/mem, environ, nor ptrace it. Root may, whatever we do: run runners
  as an unprivileged user. Non-dumpable also hides /proc/<pid>/fd from that user; ``exec`` resets it, so tasks are
  ordinary processes.

Which variables are secret is the rule tasks are handed their environment by (``task_env``): the project's own
secrets, any variable whose value holds one, and every variable named like a credential.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from collections.abc import Mapping, MutableMapping

from coherence_network.task_env import (
    environment_secrets,
    holds_secret,
    is_credential_name,
    is_project_secret,
    secret_values,
)

log = logging.getLogger("coherence.process")

PR_SET_DUMPABLE = 4  # linux/prctl.h
ENV_START_FIELD, ENV_END_FIELD = 50, 51  # proc(5): /proc/<pid>/stat, counted from 1
FILLER = ord("*")


def protect(environ: MutableMapping[str, str] = os.environ) -> list[str]:
    """Make this process non-dumpable and blank its secrets in its original environment block (see the module
    docstring); returns the names blanked. Every long-running command calls it first thing, also when the supervisor's
    ``python -m coherence_network.cli.supervised`` wrapper runs it (in the same process). Safe to call again."""
    if not sys.platform.startswith("linux"):
        return []
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_DUMPABLE) failed (%s): processes of this user may read this one's memory",
                    os.strerror(ctypes.get_errno()))
    hidden = secret_names(environ)
    for name in hidden:
        environ[name] = environ[name]  # setenv: libc's copy moves to the heap, so children still inherit the value
    _blank_original_block({os.fsencode(name) for name in hidden})
    return sorted(hidden)


def start_resource_tracker_without_secrets(environ: MutableMapping[str, str] = os.environ) -> None:
    """Start multiprocessing's resource tracker (uvicorn's ``--workers`` start it, and it lives as long as the API)
    now, with the secret variables unset: it needs none, and it would show them in its own /proc/<pid>/environ."""
    from multiprocessing import resource_tracker

    kept = {name: environ.pop(name) for name in secret_names(environ)}
    try:
        resource_tracker.ensure_running()
    finally:
        environ.update(kept)


def secret_names(environ: Mapping[str, str]) -> set[str]:
    """Variables that must not be readable from outside: the project's secrets, any variable holding one of their
    values, and every variable named like a credential."""
    own = environment_secrets(environ)
    return {name for name, value in environ.items() if is_project_secret(name, value, own) or is_credential_name(name)}


def without_store_secrets(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment for a component that does not open the store (only the API does): without DATABASE_URL and
    without any variable holding it or its password, so neither it nor its tasks ever hold the database password."""
    store = secret_values(value for name, value in environ.items() if name.upper() == "DATABASE_URL")
    return {name: value for name, value in environ.items()
            if name.upper() != "DATABASE_URL" and not holds_secret(value, store)}


def _blank_original_block(names: set[bytes]) -> None:
    """Overwrite the values of ``names`` with FILLER where the kernel reads /proc/self/environ from."""
    if not names:
        return
    with open("/proc/self/stat", "rb") as handle:
        fields = handle.read().rsplit(b")", 1)[1].split()  # fields[0] is field 3 (state): the name may hold spaces
    start, end = int(fields[ENV_START_FIELD - 3]), int(fields[ENV_END_FIELD - 3])
    if not 0 < start < end:
        log.warning("cannot find this process's environment block (/proc/self/stat); its secrets stay readable")
        return
    block = ctypes.string_at(start, end - start)
    offset = 0
    for entry in block.split(b"\0"):
        name, equals, value = entry.partition(b"=")
        if equals and name in names and value.strip(b"*"):
            ctypes.memset(start + offset + len(name) + 1, FILLER, len(value))
        offset += len(entry) + 1

"""A small file system of its own (a tmpfs) that a test can fill: a full disk, for real, and freed again."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.required import IN_CI, missing


@contextmanager
def small_disk(mount: Path, megabytes: int) -> Iterator[Path]:
    """A ``megabytes`` tmpfs at ``mount`` (created), unmounted afterwards. Mounting needs root: elsewhere the test is
    skipped, except in CI, where that fails it."""
    if os.geteuid() != 0 and not IN_CI:
        pytest.skip("mounting a tmpfs needs root")
    mount.mkdir(parents=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m,mode=0700", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        missing(f"cannot mount a tmpfs (needs root and mount(8)): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path) -> Path:
    """Write a file until the file system under ``folder`` has no space left; the file, to free it again."""
    filler = folder / "filler"
    block = b"\0" * 2**20
    with open(filler, "wb", buffering=0) as out:
        while True:
            try:
                out.write(block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                if len(block) == 1:
                    return filler
                block = block[: len(block) // 16] or b"\0"

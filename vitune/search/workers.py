"""Local helper workers for ``vitune study run --workers N``: N-1 ``vitune study worker``
processes on this machine share the study's storage with the calling process."""

from __future__ import annotations

import subprocess
import sys

from vitune.errors import ConfigError


def check_shareable(storage: str) -> None:
    if storage.startswith("sqlite:///:memory:") or storage in ("sqlite://", "sqlite:///"):
        raise ConfigError(f"storage {storage!r} lives in one process; workers need a file or a server (sqlite:///path.db, journal:///path.log, postgresql://...)")


def spawn_workers(spec, count: int, timeout_s: float | None = None) -> list[subprocess.Popen]:
    """Start ``count`` workers on ``spec``'s study (its storage passed :func:`check_shareable`)."""
    cmd = [sys.executable, "-m", "vitune.cli", "study", "worker", str(spec.path), "--quiet"]
    if timeout_s is not None:
        cmd += ["--timeout", str(timeout_s)]
    return [subprocess.Popen(cmd, stdout=subprocess.DEVNULL) for _ in range(count)]

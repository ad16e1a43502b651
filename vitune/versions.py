"""Versions of the libraries a result depends on (read from package metadata, no imports), and
hashes of vitune's own code that produced it (caches are keyed by both: a fixed compression
method, a torch upgrade or a TVM upgrade is a cache miss, never a stale result)."""

from __future__ import annotations

import functools
import hashlib
from importlib import metadata
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def versions() -> dict[str, str]:
    out = {}
    for dist in ("vitune", "torch", "timm", "apache-tvm", "optuna", "numpy"):
        try:
            out[dist.replace("apache-", "")] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist.replace("apache-", "")] = "not installed"
    return out


@functools.lru_cache(maxsize=None)
def code_hash(*subpackages: str) -> str:
    """A hash of the source of these subpackages of vitune (``"compression"``, ``"targets"``...):
    what a change of vitune's code that can change a result invalidates. About 1 ms per call
    after the first."""
    digest = hashlib.sha256()
    for sub in sorted(subpackages):
        for path in sorted((PACKAGE / sub).rglob("*")):
            if path.is_file() and path.suffix in (".py", ".toml"):
                digest.update(str(path.relative_to(PACKAGE)).encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def result_versions(*subpackages: str, libraries: tuple[str, ...] = ("torch", "timm", "tvm")) -> dict[str, str]:
    """What a cached result depends on besides its inputs: the libraries' versions and the hash
    of the vitune code that computed it."""
    found = versions()
    return {"code": code_hash(*subpackages), **{lib: found[lib] for lib in libraries}}

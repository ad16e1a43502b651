"""Versions of the libraries a result depends on (read from package metadata, no imports)."""

from __future__ import annotations

from importlib import metadata


def versions() -> dict[str, str]:
    out = {}
    for dist in ("vitune", "torch", "timm", "apache-tvm", "optuna", "numpy"):
        try:
            out[dist.replace("apache-", "")] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist.replace("apache-", "")] = "not installed"
    return out

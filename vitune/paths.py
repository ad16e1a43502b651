"""Where vitune keeps files it can rebuild: trained checkpoints, tuning databases."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The cache root: ``$VITUNE_CACHE_DIR``, else ``$XDG_CACHE_HOME/vitune``, else ``~/.cache/vitune``."""
    env = os.environ.get("VITUNE_CACHE_DIR")
    if env:
        root = Path(env)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = (Path(xdg) if xdg else Path.home() / ".cache") / "vitune"
    root.mkdir(parents=True, exist_ok=True)
    return root

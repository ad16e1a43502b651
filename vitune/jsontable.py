"""A dict persisted as one JSON file and shared by processes (caches, lookup tables).

On save, what other processes wrote since is merged in under an exclusive file lock and the
file is replaced atomically, so concurrent writers lose nothing and readers never see a torn
file. A torn or foreign file is started over (everything kept in these files can be rebuilt).
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from pathlib import Path


class JsonTable:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.data: dict = self._read()
        self._dirty = False

    def _read(self) -> dict:
        try:
            data = json.loads(self.path.read_text()) if self.path.is_file() else {}
        except (json.JSONDecodeError, UnicodeDecodeError):
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, key: str, default=None):
        return self.data.get(key, default)

    def put(self, key: str, value) -> None:
        self.data[key] = value
        self._dirty = True

    def refresh(self) -> None:
        """Read what other processes saved since (keeping this process's unsaved entries)."""
        self.data = {**self._read(), **self.data}

    def save(self) -> None:
        if not self._dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.data = {**self._read(), **self.data}
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, suffix=".tmp")
            with os.fdopen(fd, "w") as fh:
                json.dump(self.data, fh)
            os.replace(tmp, self.path)
        self._dirty = False

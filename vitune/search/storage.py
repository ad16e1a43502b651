"""Optuna storage from a study's URL: SQLite (default), any RDB URL (PostgreSQL for workers on
several machines), or a journal file (``journal:///path.log``).

* SQLite runs in WAL mode with a 60 s busy timeout, so workers on one machine share it without
  "database is locked" (readers never block the writer; writers queue). It is not for workers on
  several machines: SQLite's locking does not hold on network file systems; use PostgreSQL or a
  journal file on a shared disk.
* A file that exists but is not an Optuna storage (another SQLite database, a text file, a torn
  journal) is reported and left untouched, never overwritten.

Stale trials of stopped workers are handled by :mod:`vitune.search.coordination`, the same for
every storage.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from vitune.errors import ConfigError, message_line

SQLITE_TIMEOUT_S = 60


def _check_sqlite(path: Path, url: str) -> None:
    if not path.exists() or path.stat().st_size == 0:
        return
    try:
        con = sqlite3.connect(str(path), timeout=SQLITE_TIMEOUT_S)
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            con.close()
    except sqlite3.DatabaseError as err:
        raise ConfigError(f"storage {url}: {path} is not a readable SQLite database ({err}); left untouched") from None
    if tables and not {"studies", "trials", "version_info"} <= tables and not tables <= _optuna_tables():
        # (only Optuna's tables, some missing: another worker is creating them right now, and
        # RDBStorage creates the rest or waits for it; stop 52's CI saw a worker refused here)
        raise ConfigError(
            f"storage {url}: {path} is a SQLite database of something else (tables {', '.join(sorted(tables)[:4])}); "
            "left untouched: point [study].storage at another file"
        )


def _optuna_tables() -> set[str]:
    """The tables Optuna's RDB storage makes (its schema, and Alembic's version table)."""
    try:
        from optuna.storages._rdb import models

        return set(models.BaseModel.metadata.tables) | {"alembic_version"}
    except Exception:  # a future Optuna that moved its models: what it has made since 2.0
        return {"studies", "study_directions", "study_user_attributes", "study_system_attributes", "trials",
                "trial_user_attributes", "trial_system_attributes", "trial_params", "trial_values",
                "trial_intermediate_values", "trial_heartbeats", "version_info", "alembic_version"}


def _check_journal(path: Path, url: str) -> None:
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb") as fh:
        first = fh.readline()
    try:
        record = json.loads(first)
        ok = isinstance(record, dict) and "op_code" in record
    except (json.JSONDecodeError, UnicodeDecodeError):
        ok = False
    if not ok:
        raise ConfigError(f"storage {url}: {path} is not an Optuna journal (its first line is not a journal record); left untouched")


def storage_file(url: str) -> Path | None:
    """The file behind a SQLite or journal URL (None for a server URL or an in-memory database).
    As in SQLAlchemy, ``sqlite:///runs/x.db`` is relative and ``sqlite:////abs/x.db`` absolute;
    study files resolve relative paths against their own folder before this is called."""
    for scheme in ("sqlite:///", "journal:///"):
        if url.startswith(scheme):
            rest = url[len(scheme):]
            return None if rest in ("", ":memory:") else Path(rest)
    return None


def make_storage(url: str):
    import optuna

    if url.startswith("journal:///"):
        path = Path(url[len("journal:///") :])
        _check_journal(path, url)
        path.parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        try:
            return JournalStorage(JournalFileBackend(str(path)))
        except Exception as err:  # a torn or foreign journal fails while it is replayed
            raise ConfigError(f"storage {url}: the journal cannot be replayed ({type(err).__name__}: {err}); left untouched") from None
    engine: dict = {}
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///") :])
        _check_sqlite(path, url)
        path.parent.mkdir(parents=True, exist_ok=True)
        engine = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
    storage = None
    for attempt in range(3):
        try:
            storage = optuna.storages.RDBStorage(url, engine_kwargs=engine)
            break
        except Exception as err:  # SQLAlchemy errors: bad URL, unreachable server, missing driver, foreign schema
            from sqlalchemy.exc import IntegrityError

            if (isinstance(err, IntegrityError) or "already exists" in str(err)) and attempt < 2:
                time.sleep(1.0)  # workers started together on an empty database raced to create Optuna's tables
                continue
            raise ConfigError(f"storage {url!r} cannot be opened: {message_line(err, last=False)}") from None
    if url.startswith("sqlite:///"):
        with storage.engine.connect() as con:  # WAL persists in the file: every later connection uses it
            con.exec_driver_sql("PRAGMA journal_mode=WAL")
    return storage

"""Optuna storage from a study's URL: SQLite (default), any RDB URL, or a journal file.

SQLite and RDB storages get a heartbeat, so a trial left RUNNING by a killed process is
marked failed the next time the study is run.
"""

from __future__ import annotations

from pathlib import Path

from vitune.errors import ConfigError

HEARTBEAT_S = 30
GRACE_S = 90


def make_storage(url: str):
    import optuna

    if url.startswith("journal:///"):
        path = Path(url[len("journal:///") - 1 :])
        path.parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///") - 1 :])
        path.parent.mkdir(parents=True, exist_ok=True)
        engine = {"connect_args": {"timeout": 60}}
    else:
        engine = {}
    import warnings

    try:
        with warnings.catch_warnings():  # heartbeat_interval is marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S
            )
    except Exception as err:  # SQLAlchemy errors: bad URL, unreachable server, missing driver
        raise ConfigError(f"storage {url!r} cannot be opened: {str(err).splitlines()[0]}") from None

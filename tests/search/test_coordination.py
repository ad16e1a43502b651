"""One evaluation per configuration (the bakery rule), stale-trial reaping, storage checks."""

import os
import sqlite3
import subprocess
import sys
import threading
import time

import optuna
import pytest

from vitune.errors import ConfigError
from vitune.search import coordination
from vitune.search.coordination import reap_stale, wait_for_turn
from vitune.search.storage import make_storage


def _study():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(directions=["maximize", "minimize"])


def _waiter(study, number, key):
    box = {}
    thread = threading.Thread(target=lambda: box.setdefault("result", wait_for_turn(study, number, key)), daemon=True)
    thread.start()
    return thread, box


def test_a_later_trial_waits_for_an_earlier_one_with_the_same_configuration(monkeypatch):
    monkeypatch.setattr(coordination, "POLL_S", 0.02)
    study = _study()
    first, second = study.ask(), study.ask()
    first.set_user_attr("config_key", "K")
    second.set_user_attr("config_key", "K")
    assert wait_for_turn(study, first.number, "K") is None  # the lower ticket evaluates
    thread, box = _waiter(study, second.number, "K")
    time.sleep(0.2)
    assert thread.is_alive()  # blocked while the first runs
    first.set_user_attr("metrics", {"accuracy": 0.9, "latency_ms": 1.0})
    study.tell(first, [0.9, 1.0])
    thread.join(timeout=5)
    assert box["result"].number == first.number


def test_a_trial_still_choosing_blocks_later_ones_until_it_announces(monkeypatch):
    monkeypatch.setattr(coordination, "POLL_S", 0.02)
    study = _study()
    choosing, later = study.ask(), study.ask()
    later.set_user_attr("config_key", "K")
    thread, box = _waiter(study, later.number, "K")
    time.sleep(0.2)
    assert thread.is_alive()
    choosing.set_user_attr("config_key", "OTHER")  # announced something else: no conflict
    thread.join(timeout=5)
    assert box["result"] is None


def test_failures_are_reused_but_interrupted_runs_are_not():
    study = _study()
    failed = study.ask()
    failed.set_user_attr("config_key", "K")
    failed.set_user_attr("error", "build failed: simulated")
    study.tell(failed, state=optuna.trial.TrialState.FAIL)
    killed = study.ask()
    killed.set_user_attr("config_key", "J")
    killed.set_user_attr("error", "interrupted: its worker stopped mid-trial")
    killed.set_user_attr("interrupted", True)
    study.tell(killed, state=optuna.trial.TrialState.FAIL)
    new = study.ask()
    assert wait_for_turn(study, new.number, "K").number == failed.number
    assert wait_for_turn(study, new.number, "J") is None


def test_a_trial_whose_worker_died_is_reaped():
    study = _study()
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = study.ask()
    dead.set_user_attr("worker", {"host": coordination.socket.gethostname(), "pid": proc.pid, "started": coordination._start_time(proc.pid)})
    alive = study.ask()
    alive.set_user_attr("worker", coordination.this_worker())
    assert reap_stale(study) == []
    proc.kill()
    proc.wait()
    assert reap_stale(study) == [dead.number]
    trial = study.trials[dead.number]
    assert trial.state == optuna.trial.TrialState.FAIL and trial.user_attrs["interrupted"]
    assert "stopped mid-trial" in trial.user_attrs["error"]
    assert study.trials[alive.number].state == optuna.trial.TrialState.RUNNING


def test_a_silent_worker_on_another_host_is_reaped_after_the_grace_period():
    study = _study()
    t = study.ask()
    t.set_user_attr("worker", {"host": "elsewhere", "pid": 1, "started": 0})
    t.set_user_attr("heartbeat", time.time() - coordination.GRACE_S - 5)
    assert reap_stale(study) == [t.number]


def test_a_foreign_sqlite_database_is_reported_and_left_untouched(tmp_path):
    path = tmp_path / "other.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE invoices (id INTEGER)")
    con.commit()
    con.close()
    before = path.read_bytes()
    with pytest.raises(ConfigError, match="SQLite database of something else"):
        make_storage(f"sqlite:///{path}")
    assert path.read_bytes() == before
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ConfigError, match="not a readable SQLite database"):
        make_storage(f"sqlite:///{garbage}")


def test_a_database_whose_optuna_tables_another_worker_is_still_creating_is_not_taken_for_a_foreign_one(tmp_path):
    import optuna
    import sqlalchemy
    from optuna.storages._rdb import models

    path = tmp_path / "racing.db"
    engine = sqlalchemy.create_engine(f"sqlite:///{path}")
    models.BaseModel.metadata.tables["studies"].create(engine)  # the first of Optuna's tables, the rest not yet
    engine.dispose()
    storage = make_storage(f"sqlite:///{path}")
    study = optuna.create_study(study_name="s", storage=storage, directions=["maximize", "minimize"])
    study.tell(study.ask(), [0.9, 1.0])
    assert len(optuna.load_study(study_name="s", storage=make_storage(f"sqlite:///{path}")).trials) == 1


def test_a_foreign_journal_is_reported_and_left_untouched(tmp_path):
    path = tmp_path / "notes.log"
    path.write_text("meeting notes\n")
    with pytest.raises(ConfigError, match="not an Optuna journal"):
        make_storage(f"journal:///{path}")
    assert path.read_text() == "meeting notes\n"


def test_an_unreachable_postgres_fails_with_one_line():
    with pytest.raises(ConfigError, match="cannot be opened") as err:
        make_storage("postgresql+psycopg2://nobody@127.0.0.1:1/none")
    assert "\n" not in str(err.value)


def test_sqlite_storage_runs_in_wal_mode(tmp_path):
    make_storage(f"sqlite:///{tmp_path / 's.db'}")
    con = sqlite3.connect(tmp_path / "s.db")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()


def test_host_lock_excludes_timing_from_shared_work(tmp_path, monkeypatch):
    monkeypatch.setenv("VITUNE_CACHE_DIR", str(tmp_path))
    lock = coordination.HostLock()
    code = (
        "import sys, time; sys.path.insert(0, %r); from vitune.search.coordination import HostLock\n"
        "with HostLock().shared():\n    print('in', flush=True); time.sleep(1.0)\n" % os.getcwd()
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env={**os.environ})
    assert proc.stdout.readline().strip() == "in"
    t0 = time.perf_counter()
    with lock.exclusive():
        waited = time.perf_counter() - t0
    proc.wait()
    assert waited > 0.5  # timing waited for the other process's compression to end


def test_time_waiting_for_the_host_lock_is_not_counted_as_accuracy_or_latency(tmp_path, monkeypatch, default_workspace, fast_target):
    from tests.search.test_search_modes import ParamsLatency
    from vitune.compression.config import CompressionConfig
    from vitune.search.evaluate import Evaluator

    monkeypatch.setenv("VITUNE_CACHE_DIR", str(tmp_path))
    code = (
        "import sys, time; sys.path.insert(0, %r); from vitune.search.coordination import HostLock\n"
        "with HostLock().exclusive():\n    print('in', flush=True); time.sleep(4.0)\n" % os.getcwd()
    )
    ev = Evaluator(default_workspace, fast_target, ParamsLatency(fast_target), host_lock=coordination.HostLock())
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env={**os.environ})
    assert proc.stdout.readline().strip() == "in"  # another process is timing on this machine
    result = ev.evaluate(CompressionConfig.identity())
    proc.wait()
    assert result.ok, result.error
    t = result.timings
    assert t["lock_wait_s"] > 3.0  # the compression stage waited for the other process's timing
    # none of the 4 s wait is in a stage's time (each takes well under a second on a quiet
    # machine, over one on a loaded CI runner: the margin is the wait's, not the stages')
    assert t["compress_s"] < 2.5 and t["accuracy_s"] < 2.5 and t["latency_s"] < 2.5, t

"""How processes share one study without evaluating a configuration twice or losing a result.

Any number of workers, on one machine or many, may run the same study through shared Optuna
storage (PostgreSQL, another RDB, a journal file; SQLite for workers on one machine).

* **Who runs a trial.** Every trial records its ``worker`` (host, pid, process start time) and a
  ``heartbeat`` (epoch seconds) refreshed by a thread every :data:`HEARTBEAT_S` while it runs.
* **Stale trials.** :func:`reap_stale` fails a RUNNING trial whose worker is gone: at once when
  it ran on this host and its process no longer exists (SIGKILL, a crash), or when its heartbeat
  is older than :data:`GRACE_S` (another host went silent). The trial is marked
  ``interrupted`` with the reason; everything completed stays. Every run reaps on start.
* **One evaluation per configuration, by design** (:func:`wait_for_turn`). Trial numbers are
  handed out atomically by the storage, so they serve as tickets (Lamport's bakery): a trial
  evaluates its configuration only when no lower-numbered running trial holds the same
  configuration and none is still choosing one (running without a ``config_key`` yet);
  otherwise it waits, then reuses the earlier trial's result. A configuration that failed for a
  reason of its own (not an interrupted worker), or was stopped early, is not retried either.
* **Quiet timing** (:class:`HostLock`). Workers on one machine would disturb each other's
  latency measurements: CPU-heavy phases (compression, accuracy) hold a shared lock of the host
  and timing holds it exclusively, so measurements run alone.
"""

from __future__ import annotations

import fcntl
import os
import socket
import threading
import time
from contextlib import contextmanager

HEARTBEAT_S = 10.0
GRACE_S = 600.0  # a silent worker on another host is declared gone after this long
POLL_S = 0.5


def _start_time(pid: int) -> float | None:
    try:
        import psutil

        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc.create_time()
    except Exception:  # no such process, or psutil cannot see it
        return None


def this_worker() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": _start_time(os.getpid())}


def _gone(worker: dict | None, heartbeat: float | None, started_at: float | None, now: float) -> str | None:
    """Why the worker of a RUNNING trial is gone, or None while it may still be alive."""
    if worker and worker.get("host") == socket.gethostname():
        start = _start_time(int(worker.get("pid", -1)))
        if start is None or (worker.get("started") is not None and abs(start - worker["started"]) > 1.0):
            return f"its worker (pid {worker.get('pid')} on {worker.get('host')}) stopped mid-trial"
        return None
    last = heartbeat if heartbeat is not None else started_at
    if last is not None and now - last > GRACE_S:
        who = f"{worker.get('host')}:{worker.get('pid')}" if worker else "an unknown worker"
        return f"no heartbeat from {who} for {now - last:.0f} s (stopped mid-trial)"
    return None


def reap_stale(study) -> list[int]:
    """Fail every RUNNING trial whose worker is gone; returns their numbers."""
    import optuna

    now, reaped = time.time(), []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        started = t.datetime_start.timestamp() if t.datetime_start else None
        reason = _gone(t.user_attrs.get("worker"), t.user_attrs.get("heartbeat"), started, now)
        if reason is None:
            continue
        storage = study._storage
        try:
            storage.set_trial_user_attr(t._trial_id, "error", f"interrupted: {reason}")
            storage.set_trial_user_attr(t._trial_id, "interrupted", True)
            storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
            reaped.append(t.number)
        except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
            pass  # it finished meanwhile: not stale after all
    return reaped


class Heartbeat:
    """Marks a trial as alive (``heartbeat`` user attribute) from a daemon thread until stopped."""

    def __init__(self, study, trial_id: int):
        self.storage, self.trial_id = study._storage, trial_id
        self._stop = threading.Event()
        self.storage.set_trial_user_attr(trial_id, "worker", this_worker())
        self.storage.set_trial_user_attr(trial_id, "heartbeat", time.time())
        self._thread = threading.Thread(target=self._run, name=f"vitune-heartbeat-{trial_id}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self.storage.set_trial_user_attr(self.trial_id, "heartbeat", time.time())
            except Exception:  # the trial finished (or storage hiccup): the next beat or stop() settles it
                pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def reusable(trial) -> bool:
    """Whether a finished trial's outcome stands for its configuration (not an interrupted run)."""
    if trial.state.name == "COMPLETE":
        from vitune.search.records import has_metrics

        return has_metrics(trial)
    if trial.state.name == "FAIL":
        return "error" in trial.user_attrs and not trial.user_attrs.get("interrupted")
    if trial.state.name == "PRUNED":  # the front only improves, so a hopeless candidate stays hopeless
        return "pruned" in trial.user_attrs
    return False


def wait_for_turn(study, number: int, key: str, log=None):
    """Block until this trial (``number``, configuration ``key``) may evaluate; return the earlier
    finished trial whose outcome it should reuse instead, or None to evaluate it."""
    import optuna

    running = optuna.trial.TrialState.RUNNING
    last_reap = 0.0
    waited = False
    while True:
        trials = study.get_trials(deepcopy=False)
        for t in trials:
            if t.number != number and t.user_attrs.get("config_key") == key and reusable(t):
                return t
        blockers = [
            t for t in trials
            if t.number < number and t.state == running and t.user_attrs.get("config_key") in (key, None)
        ]
        if not blockers:
            return None
        if not waited and log is not None:
            same = [t.number for t in blockers if t.user_attrs.get("config_key") == key]
            if same:
                log(f"trial {number}: the same configuration is running as trial {same[0]}; waiting for its result")
            waited = True
        if time.monotonic() - last_reap > 5 * POLL_S:
            reap_stale(study)
            last_reap = time.monotonic()
        time.sleep(POLL_S)


class HostLock:
    """A lock shared by every vitune process on this machine: ``shared()`` for CPU-heavy work,
    ``exclusive()`` for timing. Uncontended (one process) it costs a system call."""

    def __init__(self):
        from vitune.paths import cache_dir

        path = cache_dir() / "locks" / "host-measure.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path

    @contextmanager
    def _hold(self, mode: int):
        with open(self.path, "a") as fh:
            fcntl.flock(fh, mode)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def shared(self):
        return self._hold(fcntl.LOCK_SH)

    def exclusive(self):
        return self._hold(fcntl.LOCK_EX)

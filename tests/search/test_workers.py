"""Workers sharing one study for real: PostgreSQL (started by .ci/run on 127.0.0.1), a journal
file and SQLite; a worker killed with SIGKILL; Ctrl-C; the front of an interrupted study."""

import collections
import os
import signal
import subprocess
import sys
import time
import uuid

import optuna
import pytest

from vitune.search.export import export
from vitune.search.study import open_study, run_study
from vitune.search.studyfile import load_study_file

STUDY = """
[study]
name = "{name}"
storage = "{storage}"
n_trials = {n}
sampler = "random"
seed = 3
[target]
name = "{target}"
tuning = "off"
[search]
warm_start = false
min_fidelity = 0.0
accuracy_shards = 1
[space]
precision = ["fp32", "int8", "w8a8"]
rank_fraction = [1.0, 0.5, 0.25]
prune_heads = [0.0, 0.25]
prune_mlp = [0.0, 0.5]
"""


def _spec(tmp_path, fast_target_file, storage, n):
    name = f"w{uuid.uuid4().hex[:8]}"
    path = tmp_path / f"{name}.toml"
    path.write_text(STUDY.format(name=name, storage=storage.format(tmp=tmp_path, name=name), n=n, target=fast_target_file))
    return load_study_file(path)


def _vitune(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "vitune.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ}, **kw)


def _postgres_url():
    url = os.environ.get("VITUNE_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("VITUNE_TEST_POSTGRES_URL is not set (.ci/run starts PostgreSQL on 127.0.0.1 and sets it)")
    return url


STORAGES = {
    "postgresql": None,  # filled from the environment
    "journal": "journal:///{tmp}/{name}.log",
    "sqlite": "sqlite:///{tmp}/{name}.db",
}


@pytest.mark.parametrize("kind", sorted(STORAGES))
def test_two_workers_complete_the_study_together_without_repeating_a_configuration(kind, tmp_path, fast_target_file, default_workspace):
    storage = _postgres_url() if kind == "postgresql" else STORAGES[kind]
    spec = _spec(tmp_path, fast_target_file, storage, n=6)
    workers = [_vitune("study", "worker", str(spec.path), "--quiet") for _ in range(2)]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    study = open_study(spec, create=False)
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    assert len(finished) >= 6, outputs
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    assert not [t for t in trials if t.state == optuna.trial.TrialState.FAIL], [t.user_attrs.get("error") for t in trials]
    evaluated = collections.Counter(t.user_attrs["config_key"] for t in finished if "cached_from" not in t.user_attrs)
    assert max(evaluated.values()) == 1  # no configuration evaluated twice
    pids = {t.user_attrs["worker"]["pid"] for t in finished}
    assert len(pids) == 2, "both workers ran trials"
    assert "database is locked" not in "".join(outputs)


def _wait_for(predicate, timeout, what):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_worker_killed_mid_trial_leaves_the_study_usable(tmp_path, fast_target_file, default_workspace):
    spec = _spec(tmp_path, fast_target_file, STORAGES["journal"], n=4)
    worker = _vitune("study", "worker", str(spec.path), "--quiet")

    def running_after_a_complete():
        try:
            study = open_study(spec, create=False)
        except Exception:  # not created yet
            return None
        states = [t.state for t in study.get_trials(deepcopy=False)]
        running = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.RUNNING and "config_key" in t.user_attrs]
        return running[0].number if running and optuna.trial.TrialState.COMPLETE in states else None

    victim = _wait_for(running_after_a_complete, 300, "a complete trial and a running one")
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    before = {t.number: t.values for t in open_study(spec, create=False).get_trials(states=(optuna.trial.TrialState.COMPLETE,))}
    lines = []
    summary = run_study(spec, progress=False, log=lines.append)
    study = open_study(spec, create=False)
    killed = study.trials[victim]
    assert killed.state == optuna.trial.TrialState.FAIL and killed.user_attrs["interrupted"]
    assert "stopped mid-trial" in killed.user_attrs["error"]
    assert any("left running by a stopped worker" in line for line in lines)
    for number, values in before.items():  # nothing completed was lost
        assert study.trials[number].values == values
    assert summary.total_complete + len(study.get_trials(states=(optuna.trial.TrialState.PRUNED,))) >= 4


def test_ctrl_c_stops_after_the_current_trial_and_the_front_can_be_exported(tmp_path, fast_target_file, default_workspace):
    spec = _spec(tmp_path, fast_target_file, STORAGES["sqlite"], n=40)
    run = _vitune("study", "run", str(spec.path), "--quiet")

    def complete_count():
        try:
            return len(open_study(spec, create=False).get_trials(states=(optuna.trial.TrialState.COMPLETE,)))
        except Exception:
            return 0

    _wait_for(complete_count, 300, "a complete trial")
    run.send_signal(signal.SIGINT)
    out = run.communicate(timeout=300)[0]
    assert run.returncode == 0, out
    assert "stopped on request" in out
    study = open_study(spec, create=False)
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    assert len(study.trials) < 40
    doc = export(spec, "pareto", tmp_path / "front.json")  # an interrupted study still exports its front
    assert doc["members"]


def test_a_trial_another_worker_finished_first_does_not_stop_this_one(tmp_path, fast_target_file, default_workspace, monkeypatch):
    """Two workers may pop one queued trial from SQLite; the one that tells it second was stopped
    by Optuna's "Cannot tell a COMPLETE trial" (CI, stop 40). Simulated: before this process
    tells its second trial, "another worker" completes it; the run logs it and goes on to its goal."""
    import optuna.study._optimize as optimize_module

    spec = _spec(tmp_path, fast_target_file, STORAGES["sqlite"], n=4)
    real, raced = optimize_module._tell_with_warning, []

    def tell(study, trial, *args, **kw):
        if trial.number == 1 and not raced:  # the other worker finished it first
            raced.append(trial.number)
            real(study, trial, *args, **kw)
        return real(study, trial, *args, **kw)

    monkeypatch.setattr(optimize_module, "_tell_with_warning", tell)
    lines: list[str] = []
    run_study(spec, progress=False, log=lines.append)
    assert raced == [1] and any("finished by another worker meanwhile" in line for line in lines), lines
    study = open_study(spec, create=False)
    assert len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))) >= 4

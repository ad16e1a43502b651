"""MetaSchedule tuning with the persistent per-target database (in-process builder and runner)."""

import numpy as np
import pytest
import torch
from torch import nn

from vitune.targets.compile import compile_model
from vitune.targets.runner import runner_for
from vitune.targets.tuning import Tuner, database_dir


@pytest.fixture()
def tiny_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 24), nn.GELU(), nn.Linear(24, 8)).eval(), torch.randn(1, 5, 16)


def test_workloads_are_tuned_once_then_reused(tiny_mlp, fast_target, tmp_path, monkeypatch):
    monkeypatch.setenv("VITUNE_CACHE_DIR", str(tmp_path))
    model, x = tiny_mlp
    first = Tuner(fast_target, "tune", trials_per_task=4)
    compiled = compile_model(model, x, fast_target, first)
    rep = compiled.tuning
    assert rep.workloads >= 2 and rep.tuned == rep.workloads and rep.from_database == 0 and rep.trials > 0
    assert (database_dir(fast_target) / "records.json").stat().st_size > 0
    got = runner_for(fast_target).run(compiled, x.numpy())
    np.testing.assert_allclose(got, model(x).detach().numpy(), atol=1e-4)

    second = Tuner(fast_target, "tune", trials_per_task=4)  # a new process would do the same
    again = compile_model(model, x, fast_target, second)
    assert again.tuning.from_database == rep.workloads and again.tuning.tuned == 0 and again.tuning.trials == 0
    assert again.timings["tune_s"] == 0.0
    np.testing.assert_allclose(runner_for(fast_target).run(again, x.numpy()), got, atol=1e-5)

    # a new shape is a new workload: only it is tuned
    wider = nn.Sequential(nn.Linear(16, 40), nn.GELU(), nn.Linear(40, 8)).eval()
    third = compile_model(wider, x, fast_target, Tuner(fast_target, "tune", trials_per_task=4))
    assert third.tuning.tuned >= 1 and third.tuning.tuned < third.tuning.workloads + 1


def test_database_mode_never_tunes(tiny_mlp, fast_target, tmp_path, monkeypatch):
    monkeypatch.setenv("VITUNE_CACHE_DIR", str(tmp_path))
    model, x = tiny_mlp
    compiled = compile_model(model, x, fast_target, Tuner(fast_target, "database"))
    assert compiled.tuning.tuned == 0 and compiled.tuning.untuned == compiled.tuning.workloads > 0
    np.testing.assert_allclose(runner_for(fast_target).run(compiled, x.numpy()), model(x).detach().numpy(), atol=1e-4)


def test_worker_runner_reports_failures_as_results():
    from tvm.s_tir.meta_schedule.runner import RunnerInput

    from vitune.targets.msworker import CandidateWorker, WorkerRunner

    (future,) = WorkerRunner(CandidateWorker()).run([RunnerInput("candidate-does-not-exist", "cpu", [])])
    assert future.done() and "no built candidate" in future.result().error_msg


def test_a_tuning_run_whose_candidates_all_fail_says_why(tiny_mlp, fast_target, tmp_path, monkeypatch):
    from pathlib import Path

    from vitune.targets.msworker import CandidateWorker

    monkeypatch.setenv("VITUNE_CACHE_DIR", str(tmp_path))
    # every candidate's build fails in the worker (tests/targets/faulty_build.py)
    worker = CandidateWorker(build="faulty_build:broken", env={"PYTHONPATH": str(Path(__file__).parent)})
    model, x = tiny_mlp
    tuner = Tuner(fast_target, "tune", trials_per_task=4, worker=worker)
    try:
        compiled = compile_model(model, x, fast_target, tuner)
    finally:
        tuner.close()
    rep = compiled.tuning
    assert rep.tuned == 0 and rep.untuned == rep.workloads and rep.trials == 0 and rep.failed > 0
    assert rep.stopped == rep.crashed == 0
    assert "candidates failed, e.g. RuntimeError: LLVM ERROR: Cannot select: intrinsic %llvm.x86.avx512" in rep.line()


def test_tuned_kernels_read_weights_laid_out_once(tiny_vit, fast_target, tmp_path, monkeypatch):
    """Tuned schedules choose their weights' layouts; the build lays the weights out once
    (main_transform_params), keeps the hand-written attention kernel, and agrees with torch,
    also after a round trip through the artifact."""
    from vitune.targets.compile import TRANSFORM_PARAMS, load_artifact, save_artifact

    monkeypatch.setenv("VITUNE_CACHE_DIR", str(tmp_path))
    x = torch.randn(1, 1, 8, 8)
    want = tiny_vit(x).detach().numpy()
    original = [tuple(p.shape) for p in tiny_vit.state_dict().values()]
    compiled = compile_model(tiny_vit, x, fast_target, Tuner(fast_target, "tune", trials_per_task=2))
    assert compiled.prepacked and compiled.timings["prepack_s"] > 0
    assert compiled.tuning.tuned > 0
    # at least one weight now has a tiled layout no torch parameter has
    assert any(tuple(p.shape) not in original for p in compiled.params)
    assert compiled.memory.weights_bytes == sum(p.nbytes for p in compiled.params)
    np.testing.assert_allclose(runner_for(fast_target).run(compiled, x.numpy()), want, atol=1e-4)

    out = tmp_path / "artifact"
    meta = save_artifact(compiled, out, fast_target)
    assert '"prepacked": true' in open(meta["meta"]).read()
    loaded = load_artifact(out)
    assert loaded.prepacked
    np.testing.assert_allclose(runner_for(fast_target).run(loaded, x.numpy()), want, atol=1e-4)

    # untuned builds keep torch's layouts and have no layout transform
    plain = compile_model(tiny_vit, x, fast_target, Tuner(fast_target, "off"))
    assert not plain.prepacked and "prepack_s" not in plain.timings
    assert all(tuple(p.shape) in original for p in plain.params)
    with pytest.raises(Exception):
        plain.runtime_module()[TRANSFORM_PARAMS]

"""The watched tuning worker: a candidate that hangs or crashes is failed with its reason, the
worker is replaced, and the tuning run carries on and keeps every good record."""

import time
from pathlib import Path

import pytest
import torch
from torch import nn

from vitune.targets.compile import compile_model
from vitune.targets.msworker import CandidateWorker, FailureLog
from vitune.targets.profile import CandidateLimits
from vitune.targets.tuning import Tuner, database_dir

HERE = Path(__file__).parent


def _spin_kernel():
    """A TIR kernel whose run never ends in practice (2**40 dependent multiply-adds)."""
    import tvm
    from tvm.script import tirx as T

    @T.prim_func
    def spin(a: T.Buffer((16,), "float32"), b: T.Buffer((16,), "float32")):
        T.func_attr({"tir.noalias": True, "tirx.is_scheduled": True})
        for i in range(16):
            b[i] = a[i]
        for _ in T.serial(T.int64(1) << T.int64(40)):
            b[0] = b[0] * T.float32(1.0000001) + a[1]

    return tvm.IRModule({"main": spin}), spin


def test_a_run_past_its_deadline_is_stopped_and_the_worker_replaced(tmp_path):
    import tvm
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    mod, func = _spin_kernel()
    worker = CandidateWorker(CandidateLimits(min_timeout_s=1.0, first_timeout_s=2.0), FailureLog(tmp_path / "failures"))
    try:
        target = str(tvm.target.Target({"kind": "llvm", "num-cores": 1}))
        built = worker.build(tvm.ir.save_json(mod), target, "spin")
        assert built.ok, built.error
        args = [a.as_json() for a in ArgInfo.from_prim_func(func)]
        t0 = time.perf_counter()
        out = worker.run(built.value, args, "cpu", 1, 1, 0, 1)
        assert time.perf_counter() - t0 < 30
        assert not out.ok and out.stopped and out.error.startswith("run exceeded 2.0 s")
        assert worker.stats.stopped == 1 and worker.stats.restarts == 1
        log = (tmp_path / "failures" / "failures.log").read_text()
        assert "spin: run exceeded 2.0 s" in log and "candidate TIR:" in log
        # the replacement builds and times the next candidate
        again = worker.build(tvm.ir.save_json(mod), target, "spin")
        assert again.ok and worker.generation == 2
    finally:
        worker.close()


def test_a_candidate_built_by_a_replaced_worker_is_built_again_before_it_runs(tmp_path):
    import tvm
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo
    from tvm.script import tirx as T

    @T.prim_func
    def add(a: T.Buffer((16,), "float32"), b: T.Buffer((16,), "float32")):
        T.func_attr({"tir.noalias": True, "tirx.is_scheduled": True})
        for i in range(16):
            b[i] = a[i] + T.float32(1)

    worker = CandidateWorker()
    try:
        target = str(tvm.target.Target({"kind": "llvm", "num-cores": 1}))
        built = worker.build(tvm.ir.save_json(tvm.IRModule({"main": add})), target, "add")
        worker._kill()  # as if another candidate had killed it
        out = worker.run(built.value, [a.as_json() for a in ArgInfo.from_prim_func(add)], "cpu", 1, 1, 0, 1)
        assert out.ok and len(out.value) == 1 and out.value[0] > 0 and worker.generation == 2
        assert not worker.run("candidate-404", [], "cpu", 1, 1, 0, 1).ok
    finally:
        worker.close()


@pytest.fixture()
def tiny_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 24), nn.GELU(), nn.Linear(24, 8)).eval(), torch.randn(1, 5, 16)


def test_tuning_survives_a_build_that_never_returns_and_one_that_crashes(tiny_mlp, fast_target, tmp_path, monkeypatch):
    monkeypatch.setenv("VITUNE_CACHE_DIR", str(tmp_path / "cache"))
    env = {"PYTHONPATH": str(HERE), "VITUNE_FAULTY_COUNTER": str(tmp_path / "count"), "VITUNE_FAULTY_HANG": "3", "VITUNE_FAULTY_CRASH": "6"}
    worker = CandidateWorker(CandidateLimits(min_timeout_s=2.0, first_timeout_s=4.0), FailureLog(tmp_path / "failures"), build="faulty_build:build", env=env)
    tuner = Tuner(fast_target, "tune", trials_per_task=4, worker=worker)
    model, x = tiny_mlp
    t0 = time.perf_counter()
    try:
        compiled = compile_model(model, x, fast_target, tuner)
    finally:
        tuner.close()
    assert time.perf_counter() - t0 < 180  # bounded: the hang cost its deadline, not an hour
    rep = compiled.tuning
    assert rep.stopped == 1 and rep.crashed == 1 and rep.failed >= 2
    assert rep.trials >= 4 and rep.tuned >= 1  # the other candidates were measured and recorded
    assert (database_dir(fast_target) / "records.json").stat().st_size > 0
    assert "1 stopped past their deadline, 1 crashed the worker" in rep.line() and str(tmp_path / "failures") in rep.line()
    log = (tmp_path / "failures" / "failures.log").read_text()
    assert "build exceeded 4.0 s" in log and "build crashed the worker (SIGSEGV)" in log
    assert "Fatal Python error: Segmentation fault" in log  # the dead worker's own last words
    np_out = compiled  # the build still runs and agrees with PyTorch
    from vitune.targets.runner import runner_for

    got = runner_for(fast_target).run(np_out, x.numpy())
    assert abs(got - model(x).detach().numpy()).max() < 1e-4

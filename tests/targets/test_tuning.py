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


def test_a_build_reusing_kernels_lays_out_the_same_weights_and_compiles_the_layout_once(tiny_vit, fast_target, tmp_path, monkeypatch):
    """With the process's kernel library (a search's builds), the weights' layout transform
    reuses its kernels too: the weights come out the same as a plain build lays them out, and a
    second build of the model compiles nothing, neither its kernels nor its layout's."""
    import vitune.targets.kernels as kernels
    from vitune.targets.kernels import KernelLibrary

    monkeypatch.setenv("VITUNE_CACHE_DIR", str(tmp_path))
    library = KernelLibrary()
    monkeypatch.setattr(kernels, "LIBRARY", library)
    x = torch.randn(1, 1, 8, 8)
    compile_model(tiny_vit, x, fast_target, Tuner(fast_target, "tune", trials_per_task=2))
    # every build below applies the database's best schedules (a tuning run may apply others of its own)
    plain = compile_model(tiny_vit, x, fast_target, Tuner(fast_target, "database"))
    assert plain.prepacked and plain.kernels is None
    first = compile_model(tiny_vit, x, fast_target, Tuner(fast_target, "database"), reuse_kernels=True)
    compiled = library.compiled
    assert first.kernels is not None and compiled > first.kernels.compiled  # the layout's kernels are in the library too
    again = compile_model(tiny_vit, x, fast_target, Tuner(fast_target, "database"), reuse_kernels=True)
    assert library.compiled == compiled and again.kernels.compiled == 0
    want = runner_for(fast_target).run(plain, x.numpy())
    np.testing.assert_allclose(want, tiny_vit(x).detach().numpy(), atol=1e-4)
    for built in (first, again):
        assert built.prepacked and [(p.shape, p.dtype) for p in built.params] == [(p.shape, p.dtype) for p in plain.params]
        # the same kernels on the same weights: the same outputs bit for bit (the weights are not
        # compared as arrays: a layout padded past a weight's edge leaves the pad unwritten, and
        # the kernels never read it)
        np.testing.assert_array_equal(runner_for(fast_target).run(built, x.numpy()), want)


def _every_record_reads_back(folder) -> int:
    """Open ``folder``'s database as MetaSchedule does (it replays every record on its workload)."""
    from vitune.targets.tuning import json_database

    return len(json_database(folder, allow_missing=False).get_all_tuning_records())


def test_two_tuners_of_one_database_keep_its_records_on_their_workloads(tiny_mlp, fast_target, tmp_path, monkeypatch):
    """Two writers of one database (two study workers, a study beside `vitune tune`): the one
    that opened it first tunes after the other appended workloads. Each process numbers its
    workloads by what it read, so without re-reading under the lock its records named the
    other's workloads and the database stopped opening."""
    monkeypatch.setenv("VITUNE_CACHE_DIR", str(tmp_path))
    model, x = tiny_mlp
    early = Tuner(fast_target, "tune", trials_per_task=2)
    early.database  # opened (empty) before the other process writes
    compile_model(model, x, fast_target, Tuner(fast_target, "tune", trials_per_task=2))
    # the same first layer (a workload the other tuned), a new last one
    other = nn.Sequential(nn.Linear(16, 24), nn.GELU(), nn.Linear(24, 12)).eval()
    late = compile_model(other, x, fast_target, early)
    assert late.tuning.tuned >= 1 and late.tuning.from_database >= 1  # the other's records, read under the lock
    assert _every_record_reads_back(database_dir(fast_target)) >= late.tuning.workloads + 1


def test_a_database_that_no_longer_opens_keeps_its_readable_records(tiny_mlp, fast_target, tmp_path, monkeypatch, caplog):
    import json

    from vitune.targets.tuning import open_database

    monkeypatch.setenv("VITUNE_CACHE_DIR", str(tmp_path))
    model, x = tiny_mlp
    first = compile_model(model, x, fast_target, Tuner(fast_target, "tune", trials_per_task=2))
    folder = database_dir(fast_target)
    records = folder / "records.json"
    lines = records.read_text().splitlines()
    good = len(lines)
    assert good >= first.tuning.workloads
    # what two writers did: a record that names another workload (its schedule does not replay
    # there), and a line torn by a process killed mid-write
    idx, rec = json.loads(lines[0])
    others = [json.loads(line)[0] for line in lines if json.loads(line)[0] != idx]
    assert others
    lines += [json.dumps([others[0], rec]), lines[0][: len(lines[0]) // 2]]
    records.write_text("".join(f"{line}\n" for line in lines))
    with pytest.raises(Exception):
        _every_record_reads_back(folder)

    with caplog.at_level("WARNING"):
        db = open_database(fast_target)
    assert len(db.get_all_tuning_records()) == good
    assert f"kept {good} records, dropped 2" in caplog.text and "needed repair" in caplog.text
    (aside,) = folder.glob("unreadable-*")
    assert len((aside / "records.json").read_text().splitlines()) == good + 2
    # and the repaired database serves the model's workloads again, without tuning
    again = compile_model(model, x, fast_target, Tuner(fast_target, "tune", trials_per_task=2))
    assert again.tuning.from_database == again.tuning.workloads and again.tuning.tuned == 0


def test_a_repeated_workload_is_merged_before_it_misnumbers_new_records(tiny_mlp, fast_target, tmp_path, monkeypatch, caplog):
    """A workloads.json that repeats a line opens (MetaSchedule reads the repeat once), but the
    next workload appended gets the repeat's number, and its records name the wrong workload."""
    from vitune.targets.tuning import open_database, repeated_workloads

    monkeypatch.setenv("VITUNE_CACHE_DIR", str(tmp_path))
    model, x = tiny_mlp
    compile_model(model, x, fast_target, Tuner(fast_target, "tune", trials_per_task=2))
    folder = database_dir(fast_target)
    workloads = folder / "workloads.json"
    lines = workloads.read_text().splitlines()
    workloads.write_text("".join(f"{line}\n" for line in [*lines, lines[0]]))
    assert repeated_workloads(folder) == {len(lines): 0}
    _every_record_reads_back(folder)  # it still opens: nothing says it is broken

    with caplog.at_level("WARNING"):
        open_database(fast_target)
    assert "repeats 1 workloads" in caplog.text
    assert repeated_workloads(folder) == {} and len(workloads.read_text().splitlines()) == len(lines)
    other = nn.Sequential(nn.Linear(16, 24), nn.GELU(), nn.Linear(24, 12)).eval()
    late = compile_model(other, x, fast_target, Tuner(fast_target, "tune", trials_per_task=2))
    assert late.tuning.tuned >= 1
    assert _every_record_reads_back(folder) >= len(lines) + late.tuning.tuned

"""Remote measurement through a real TVM RPC tracker and servers on 127.0.0.1."""

import socket
import time

import numpy as np
import pytest

from vitune.targets import load_target
from vitune.targets.check import check_target, probe_model
from vitune.targets.measure import measure
from vitune.targets.runner import runner_for

PROFILE = """
name = "{name}"
[tvm]
target = {{ kind = "llvm", num-cores = 2 }}
[runner]
kind = "rpc"
{runner}
timeout_s = {timeout}
[protocol]
warmup = 1
repeat = 3
min_repeat_ms = 5
"""


@pytest.fixture(scope="module")
def rpc_env():
    from tvm import rpc
    from tvm.rpc.tracker import Tracker

    tracker = Tracker(host="127.0.0.1", port=9190, port_end=9290, silent=True)
    tracked = rpc.Server(host="127.0.0.1", port=9300, port_end=9400, tracker_addr=("127.0.0.1", tracker.port), key="vitune-test", silent=True)
    direct = rpc.Server(host="127.0.0.1", port=9400, port_end=9500, silent=True)
    deadline = time.time() + 20
    while time.time() < deadline:  # wait until the server has registered its key
        try:
            if "vitune-test" in rpc.connect_tracker("127.0.0.1", tracker.port).summary().get("queue_info", {}):
                break
        except Exception:
            pass
        time.sleep(0.2)
    yield {"tracker": tracker.port, "direct": direct.port}
    direct.terminate()
    tracked.terminate()
    tracker.terminate()


def _profile(tmp_path, name, runner, timeout=30):
    path = tmp_path / f"{name}.toml"
    path.write_text(PROFILE.format(name=name, runner=runner, timeout=timeout))
    return load_target(str(path))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_measure_through_the_tracker_matches_local(rpc_env, tmp_path):
    profile = _profile(tmp_path, "via-tracker", f'tracker = "127.0.0.1:{rpc_env["tracker"]}"\nkey = "vitune-test"')
    model, example = probe_model()
    compiled = []
    m = measure(model, example, profile, compiled)
    assert m.ok, m.error
    assert m.latency_ms > 0 and len(m.samples_ms) == 3 and m.timings["codegen_s"] > 0
    got = runner_for(profile).run(compiled[0], example.numpy())
    np.testing.assert_allclose(got, model(example).detach().numpy(), atol=1e-4)


def test_measure_on_a_direct_server(rpc_env, tmp_path):
    profile = _profile(tmp_path, "direct", f'host = "127.0.0.1"\nport = {rpc_env["direct"]}')
    model, example = probe_model()
    m = measure(model, example, profile)
    assert m.ok, m.error
    report = check_target(profile)
    assert report.ok and report.latency_ms > 0


def test_wrong_key_is_a_failed_measurement_naming_the_keys(rpc_env, tmp_path):
    profile = _profile(tmp_path, "wrong-key", f'tracker = "127.0.0.1:{rpc_env["tracker"]}"\nkey = "no-such-board"')
    model, example = probe_model()
    m = measure(model, example, profile)
    assert not m.ok
    assert "has no device with key 'no-such-board' (keys there: vitune-test)" in m.error


def test_dead_server_and_dead_tracker_fail_fast(tmp_path):
    port = _free_port()
    model, example = probe_model()
    for runner in (f'host = "127.0.0.1"\nport = {port}', f'tracker = "127.0.0.1:{port}"\nkey = "k"'):
        profile = _profile(tmp_path, "dead", runner)
        t0 = time.perf_counter()
        m = measure(model, example, profile)
        assert not m.ok and "is unreachable" in m.error and f"127.0.0.1:{port}" in m.error
        assert time.perf_counter() - t0 < 20


def test_a_server_that_never_answers_times_out(tmp_path):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)  # accepts connections (the kernel does), never says a word
    try:
        profile = _profile(tmp_path, "silent", f'host = "127.0.0.1"\nport = {silent.getsockname()[1]}', timeout=3)
        model, example = probe_model()
        t0 = time.perf_counter()
        m = measure(model, example, profile)
        assert not m.ok and "took longer than 3 s" in m.error
        assert time.perf_counter() - t0 < 20
    finally:
        silent.close()


def test_tuning_over_rpc_fills_the_database_then_reuses_it(rpc_env, tmp_path, monkeypatch):
    """Candidates are built here and timed on the RPC server; the records serve later builds."""
    import torch
    from torch import nn

    from vitune.targets.compile import compile_model
    from vitune.targets.tuning import Tuner, database_dir

    monkeypatch.setenv("VITUNE_CACHE_DIR", str(tmp_path / "cache"))
    profile = _profile(tmp_path, "tuned-remote", f'tracker = "127.0.0.1:{rpc_env["tracker"]}"\nkey = "vitune-test"')
    torch.manual_seed(0)
    model, x = nn.Sequential(nn.Linear(16, 24), nn.GELU(), nn.Linear(24, 8)).eval(), torch.randn(1, 5, 16)
    m = measure(model, x, profile, tuner=Tuner(profile, "tune", trials_per_task=4))
    assert m.ok, m.error
    assert m.timings["tuned_workloads"] >= 2 and m.timings["untuned_workloads"] == 0
    assert (database_dir(profile) / "records.json").stat().st_size > 0
    again = compile_model(model, x, profile, Tuner(profile, "tune", trials_per_task=4))
    assert again.tuning.from_database == again.tuning.workloads >= 2 and again.tuning.trials == 0
    got = runner_for(profile).run(again, x.numpy())
    np.testing.assert_allclose(got, model(x).detach().numpy(), atol=1e-4)


def test_remote_tuning_candidates_are_cross_compiled_and_failures_are_results(tmp_path):
    """The worker's builder links aarch64 candidates with the profile's cross compiler; a dead
    device is each candidate's error, not an exception in MetaSchedule's loop."""
    import tvm
    from tvm import te
    from tvm.s_tir.meta_schedule.builder import BuilderInput
    from tvm.s_tir.meta_schedule.runner import RunnerInput

    from vitune.targets.compile import library_arch
    from vitune.targets.msremote import RemoteRunner
    from vitune.targets.msworker import CandidateWorker, WorkerBuilder

    a = te.placeholder((64,), name="a")
    add = te.create_prim_func([a, te.compute((64,), lambda i: a[i] + 1.0, name="b")])

    board = load_target("arm-a72")
    worker = CandidateWorker()
    try:
        (built,) = WorkerBuilder(worker, str(tmp_path), board.cross_compiler).build([BuilderInput(tvm.IRModule({"main": add}), board.tvm())])
    finally:
        worker.close()
    assert built.error_msg is None and library_arch(built.artifact_path) == "aarch64"

    dead = _profile(tmp_path, "dead-remote", f'host = "127.0.0.1"\nport = {_free_port()}', timeout=5)
    (future,) = RemoteRunner(dead).run([RunnerInput(built.artifact_path, "cpu", [])])
    assert future.done() and "is unreachable" in future.result().error_msg


def test_where_no_peer_runtime_runs_the_baseline_is_the_tuned_uncompressed_tvm_build(rpc_env, tmp_path):
    """Over RPC neither ONNX Runtime nor OpenVINO can run on the device: the speed-up reference is
    vitune's own build of the uncompressed model, timed on the device beside the candidate and
    labelled with how its kernels were scheduled."""
    from vitune.targets.compile import compile_model
    from vitune.targets.peers import TVM_BASELINE, baseline_peers, measure_baseline

    profile = _profile(tmp_path, "baseline-remote", f'host = "127.0.0.1"\nport = {rpc_env["direct"]}')
    assert baseline_peers(profile) == []
    model, example = probe_model()
    candidate = compile_model(model, example, profile)
    base = measure_baseline(model, example, profile, candidate, rounds=2)
    assert base.errors == {} and base.runtime == TVM_BASELINE and base.rounds == 2
    assert base.label == "vitune's TVM build (untuned)"  # this test cache has no tuning database
    assert base.latency_ms > 0 and base.candidate_ms > 0 and base.speedup == base.latency_ms / base.candidate_ms
    assert "the uncompressed model in vitune's TVM build" in base.line()

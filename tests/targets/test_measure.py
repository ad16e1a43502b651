import numpy as np
import torch

from vitune.compression.config import CompressionConfig, LinearConfig
from vitune.compression.pipeline import compress
from vitune.models.layers import discover
from vitune.targets.compile import compile_model, load_artifact, save_artifact
from vitune.targets.measure import measure, measure_many
from vitune.targets.runner import runner_for


def test_local_measurement_is_a_record(tiny_vit, fast_target):
    x = torch.randn(1, 1, 8, 8)
    m = measure(tiny_vit, x, fast_target)
    assert m.ok, m.error
    assert m.latency_ms > 0 and len(m.samples_ms) == 3 and m.spread_ms >= 0
    assert {"export_s", "build_s", "run_s"} <= set(m.timings)


def test_a_measurement_builds_beside_other_work_and_times_alone(tiny_vit, fast_target):
    """Under host_hold, CPU work (export, build, code generation) holds the lock shared, so other
    workers on this machine build at the same time; only the timing runs hold it exclusively."""
    from contextlib import contextmanager

    from vitune.targets.measure import host_hold

    held = []

    @contextmanager
    def hold(exclusive: bool):
        held.append("exclusive" if exclusive else "shared")
        yield

    with host_hold(hold):
        m = measure(tiny_vit, torch.randn(1, 1, 8, 8), fast_target)
    assert m.ok, m.error
    assert held == ["shared", "shared", "exclusive"]  # build, code generation, timing
    held.clear()
    measure(tiny_vit, torch.randn(1, 1, 8, 8), fast_target)
    assert held == []  # outside host_hold: no lock (apply, the benches)


def test_tvm_build_computes_what_torch_computes(tiny_vit, tiny_calib, fast_target, tmp_path):
    layout = discover(tiny_vit)
    cfg = CompressionConfig.make(
        {layout.linears[0].name: LinearConfig("int8", 8), layout.linears[2].name: LinearConfig("fp16")},
        prune_mlp={"blocks.1.mlp": 0.5},
    )
    model = compress(tiny_vit, cfg, calibration=tiny_calib)
    x = torch.randn(1, 1, 8, 8)
    compiled = compile_model(model, x, fast_target)
    got = runner_for(fast_target).run(compiled, x.numpy())
    np.testing.assert_allclose(got, model(x).detach().numpy(), atol=2e-3)
    # weights stay in their stored precision inside the build
    assert any(p.dtype == np.int8 for p in compiled.params) and any(p.dtype == np.float16 for p in compiled.params)
    save_artifact(compiled, tmp_path / "art", fast_target)
    again = load_artifact(tmp_path / "art")
    np.testing.assert_allclose(runner_for(fast_target).run(again, x.numpy()), got, atol=1e-6)
    with open(tmp_path / "art" / "model.so", "rb") as f:
        assert f.read(4) == b"\x7fELF"


class Unexportable(torch.nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.export refuses it
            return x
        return -x


def test_failures_come_back_as_errors_not_exceptions(fast_target):
    m = measure(Unexportable(), torch.randn(1, 4), fast_target)
    assert not m.ok and m.latency_ms is None
    assert m.error.startswith("compile failed on test-cpu:")


def test_measure_many_times_models_in_interleaved_rounds(tiny_vit, fast_target):
    x = torch.randn(1, 1, 8, 8)
    ok, bad, wider = measure_many([tiny_vit, Unexportable(), torch.nn.Linear(8, 64)], [x, torch.randn(1, 4), torch.randn(1, 8)], fast_target, rounds=2)
    per_round = fast_target.protocol.repeat
    for m in (ok, wider):
        assert m.ok, m.error
        assert len(m.samples_ms) == 2 * per_round  # every round's repeats
        assert m.latency_ms == fast_target.protocol.latency_ms(list(m.samples_ms))
        assert m.timings["run_s"] > 0 and "build_s" in m.timings
    assert not bad.ok and bad.error.startswith("compile failed on test-cpu:")  # the others still measured

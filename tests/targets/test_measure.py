import numpy as np
import pytest
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


def _weight_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.state_dict().values())


class _ScriptedMachine:
    """``LocalRunner.time`` on a machine whose speed the test sets: a build of the uncompressed
    model (weights of ``reference_bytes``) takes ``reference_ms`` per run, any other build
    ``candidate_ms``, both times ``slowdown`` while that is set (a list: one factor per timing,
    then 1). The builds are real; only the clock is scripted, so the drift arithmetic is checked
    exactly, whatever the CI machine's own noise (real timings times a factor failed twice on
    loud machines)."""

    def __init__(self, reference_bytes: int, reference_ms: float = 1.0, candidate_ms: float = 0.4):
        self.reference_bytes, self.reference_ms, self.candidate_ms = reference_bytes, reference_ms, candidate_ms
        self.slowdown: list[float] = []
        self.calls: list[str] = []

    def time(self, runner, compiled, inputs, protocol):
        is_reference = sum(p.nbytes for p in compiled.params) == self.reference_bytes
        self.calls.append("reference" if is_reference else "candidate")
        factor = self.slowdown.pop(0) if self.slowdown else 1.0
        return [factor * (self.reference_ms if is_reference else self.candidate_ms)] * protocol.repeat


def test_a_candidate_timed_while_the_machine_runs_slow_is_corrected_by_the_reference(tiny_vit, fast_target, monkeypatch):
    """The measured latency source times the uncompressed build again around each candidate: a
    candidate timed while every run takes three times as long (a slow window of a shared machine)
    records the latency it has when the machine is not slow, with the slowdown and the attempts."""
    from types import SimpleNamespace

    from vitune.costmodels.base import MeasuredLatency
    from vitune.targets.runner import LocalRunner

    source = MeasuredLatency(fast_target)
    source.bind(SimpleNamespace(model=tiny_vit), None, "off")
    machine = _ScriptedMachine(_weight_bytes(tiny_vit))
    monkeypatch.setattr(LocalRunner, "time", lambda self, c, i, p: machine.time(self, c, i, p))
    x = torch.randn(1, 1, 8, 8)
    layout = discover(tiny_vit)
    from vitune.compression.methods import CompressionMethods

    config = CompressionConfig.make({u.name: LinearConfig(rank=2) for u in layout.linears}, methods=CompressionMethods(lowrank="svd"))
    candidate = compress(tiny_vit, config)
    first = source.latency(tiny_vit, CompressionConfig.make(), x)  # the study's trial 0: the reference
    assert first.ok and first.drift is None and source.reference is not None
    assert first.latency_ms == pytest.approx(1.0)
    quiet = source.latency(candidate, config, x)
    assert quiet.ok and quiet.drift == pytest.approx(1.0) and quiet.latency_ms == pytest.approx(0.4) and quiet.attempts == 1
    for _ in range(8):  # a study's worth of reference timings at the usual speed
        source.reference.now()
    machine.calls.clear()
    machine.slowdown = [3.0] * 9  # every timing of all three attempts runs 3x slow
    slowed = source.latency(candidate, config, x)
    assert machine.calls == ["reference", "candidate", "reference"] * 3  # timed again while the window lasted
    assert slowed.attempts == 3 and slowed.raw_latency_ms == pytest.approx(1.2)
    # the reference read 3x its usual (median) latency around it: corrected to the quiet 0.4
    assert slowed.drift == pytest.approx(3.0) and slowed.latency_ms == pytest.approx(0.4)


def test_a_candidate_timed_in_a_short_slow_window_is_timed_again_when_it_has_passed(tiny_vit, fast_target, monkeypatch):
    """A slow window does not fall alike on every build (a cache-heavy reference slows more than a
    small candidate), so scaling by the reference's slowdown is the last resort: while the
    reference reads more than ``tolerance`` slow around the candidate, the three are timed again
    and the quietest attempt is kept."""
    from vitune.targets.compile import compile_model
    from vitune.targets.measure import DriftReference
    from vitune.targets.runner import LocalRunner

    x = torch.randn(1, 1, 8, 8)
    built = compile_model(tiny_vit, x, fast_target)
    from vitune.compression.methods import CompressionMethods

    svd = CompressionConfig.make({discover(tiny_vit).linears[0].name: LinearConfig(rank=2)}, methods=CompressionMethods(lowrank="svd"))
    candidate = compile_model(compress(tiny_vit, svd), x, fast_target)
    reference = DriftReference(built, x, fast_target)
    machine = _ScriptedMachine(_weight_bytes(tiny_vit))
    monkeypatch.setattr(LocalRunner, "time", lambda self, c, i, p: machine.time(self, c, i, p))
    for _ in range(5):  # the machine's usual speed
        reference.now()
    machine.slowdown = [3.0, 3.0, 3.0]  # the next three timings (one attempt) run 3x slow
    m = reference.time(candidate, x, fast_target)
    assert machine.calls[5:] == ["reference", "candidate", "reference"] * 2  # timed again after the slow attempt
    assert m.ok and m.attempts == 2 and m.drift == pytest.approx(1.0) and m.raw_latency_ms == pytest.approx(0.4)
    machine.slowdown = [1.5, 1.5, 1.5] * 3  # a window longer than the retries: the quietest attempt, scaled
    m = reference.time(candidate, x, fast_target)
    assert m.attempts == 3 and m.raw_latency_ms == pytest.approx(0.6) and m.latency_ms == pytest.approx(0.6 / m.drift)
    with pytest.raises(ValueError, match="baseline"):
        DriftReference(built, x, fast_target, baseline="mean")


def test_a_timing_budget_times_a_slow_build_in_fewer_repeats(tiny_vit, fast_target):
    """Protocol.max_timing_s: where the full count of repeats would outlast the budget, the build
    is timed in fewer (never under 3); within the budget nothing changes."""
    from dataclasses import replace

    from vitune.targets.measure import time_compiled
    from vitune.targets.runner import MIN_REPEATS

    x = torch.randn(1, 1, 8, 8)
    compiled = compile_model(tiny_vit, x, fast_target)
    many = replace(fast_target.protocol, repeat=12, number=1)
    assert len(time_compiled(compiled, x, replace(fast_target, protocol=many)).samples_ms) == 12
    capped = replace(many, max_timing_s=1e-6)
    m = time_compiled(compiled, x, replace(fast_target, protocol=capped))
    assert m.ok and len(m.samples_ms) == MIN_REPEATS
    roomy = replace(many, max_timing_s=60.0)
    assert len(time_compiled(compiled, x, replace(fast_target, protocol=roomy)).samples_ms) == 12


def test_the_drift_reference_is_timed_within_its_window_and_the_candidate_in_full(tiny_vit, fast_target, monkeypatch):
    """Each timing of the reference lasts about ``window_s`` (the profile's timing budget lowered
    to it), whatever the model's size; the candidate keeps the profile's own protocol."""
    from dataclasses import replace

    from vitune.targets.measure import DriftReference
    from vitune.targets.runner import MIN_REPEATS, LocalRunner

    x = torch.randn(1, 1, 8, 8)
    built = compile_model(tiny_vit, x, fast_target)
    profile = replace(fast_target, protocol=replace(fast_target.protocol, repeat=12, number=1, max_timing_s=30.0))
    seen: list[tuple[str, float, int]] = []
    real = LocalRunner.time

    def spy(self, compiled, inputs, protocol):
        samples = real(self, compiled, inputs, protocol)
        seen.append(("reference" if compiled is built else "candidate", protocol.max_timing_s, len(samples)))
        return samples

    monkeypatch.setattr(LocalRunner, "time", spy)
    reference = DriftReference(built, x, profile, window_s=1e-6)
    assert reference.reference_profile.protocol.max_timing_s == 1e-6
    assert DriftReference(built, x, profile, window_s=60.0).reference_profile.protocol.max_timing_s == 30.0  # never above the profile's
    m = reference.time(compile_model(tiny_vit, x, fast_target), x, profile)
    assert m.ok
    assert seen[:3] == [("reference", 1e-6, MIN_REPEATS), ("candidate", 30.0, 12), ("reference", 1e-6, MIN_REPEATS)]

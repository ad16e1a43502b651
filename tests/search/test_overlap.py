"""Validated accuracy read beside the build (vitune.search.overlap): the same number as read
after it, never a batch while the candidate is timed, stopped with the candidate, safe with the
host lock of parallel workers."""

from __future__ import annotations

import copy
import time

import pytest
import torch

from vitune.costmodels.base import LatencySource
from vitune.data.splits import accuracy_in_shards
from vitune.search.overlap import BackgroundAccuracy
from vitune.targets.measure import Measurement, _held

READS: list[tuple[float, int]] = []  # (when, PyTorch's threads in the reading thread): shared by a model and its copies


class Slow(torch.nn.Module):
    """A linear classifier that takes ``delay`` s a batch and logs each batch in READS."""

    def __init__(self, features: int, classes: int, delay: float = 0.02, fail_at: int | None = None):
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(features, classes)
        self.delay, self.fail_at = delay, fail_at

    def forward(self, x):
        READS.append((time.perf_counter(), torch.get_num_threads()))
        if self.fail_at is not None and len(READS) >= self.fail_at:
            raise ValueError("this batch fails")
        time.sleep(self.delay)
        return self.fc(x.flatten(1))


@pytest.fixture()
def data():
    torch.manual_seed(1)
    READS.clear()
    return torch.utils.data.TensorDataset(torch.randn(320, 16), torch.randint(0, 4, (320,)))


def test_read_beside_is_the_accuracy_read_after(data):
    model = Slow(16, 4, delay=0.0)
    for shards in (1, 4):
        assert BackgroundAccuracy(model, data, shards).finish() == accuracy_in_shards(model, data, shards)


def test_no_batch_is_read_while_stopped_and_the_rest_is_read_on_every_core(data):
    threads = torch.get_num_threads()
    bg = BackgroundAccuracy(Slow(16, 4, delay=0.05), data, 1)
    time.sleep(0.12)  # a few batches beside the "build"
    bg.stop_for_timing()
    start = time.perf_counter()
    time.sleep(0.3)  # "timing"
    end = time.perf_counter()
    acc, seen, _ = bg.finish()
    assert seen == len(data)
    assert not [t for t, _ in READS if start <= t <= end]  # the batch in flight ended before stop_for_timing() returned
    beside = [n for t, n in READS if t < start]
    assert beside and all(n == max(1, threads - 1) for n in beside)  # one core left to the build
    assert READS[-1][1] == threads  # after finish(): every core
    assert torch.get_num_threads() == threads  # the process's count is given back
    assert bg.beside_s > 0 and bg.batches_beside >= 1


def test_cancel_stops_between_batches_and_errors_reach_the_caller(data):
    bg = BackgroundAccuracy(Slow(16, 4, delay=0.05), data, 1)
    bg.stop_for_timing()
    bg.cancel()
    assert bg.done and len(READS) < len(data) // 32
    READS.clear()
    with pytest.raises(ValueError, match="this batch fails"):
        BackgroundAccuracy(Slow(16, 4, delay=0.0, fail_at=2), data, 1).finish()
    assert torch.get_num_threads() >= 1


def test_early_stopping_starts_once_the_latency_is_known(data):
    bg = BackgroundAccuracy(Slow(16, 4, delay=0.03), data, 4)
    _, seen, _ = bg.finish(hopeless=lambda best_possible: True)
    assert seen < len(data)  # stopped at the first shard's end after finish()
    bg2 = BackgroundAccuracy(Slow(16, 4, delay=0.0), data, 4)
    time.sleep(0.5)  # done before anyone knew its latency: read in full
    assert bg2.finish(hopeless=lambda best_possible: True)[1] == len(data)


class BuildingLatency(LatencySource):
    """A latency source that "builds" (shared hold, 0.4 s) then "times" (exclusive hold, 0.3 s),
    recording the reads that happened while it timed."""

    name = "test-building-latency"
    measures = True
    timed: list[tuple[float, float]] = []

    def latency(self, model, config, example, compiled_out=None):
        with _held(False):
            time.sleep(0.4)
        with _held(True):
            start = time.perf_counter()
            time.sleep(0.3)
            self.timed.append((start, time.perf_counter()))
        return Measurement(target=self.profile.name, latency_ms=1.0, samples_ms=(1.0,), spread_ms=0.0, source="measured")


@pytest.mark.parametrize("with_host_lock", [False, True])
def test_the_evaluator_reads_accuracy_beside_the_build(tmp_path, monkeypatch, default_workspace, fast_target, with_host_lock):
    from vitune.compression.config import CompressionConfig
    from vitune.search import coordination
    from vitune.search.evaluate import EarlyStop, Evaluator

    monkeypatch.setenv("VITUNE_CACHE_DIR", str(tmp_path))
    if torch.get_num_threads() < 2:
        pytest.skip("one PyTorch thread: nothing is read beside the build")
    lock = coordination.HostLock() if with_host_lock else None
    reads: list[float] = []
    hook = default_workspace.model.register_forward_hook(lambda *_: reads.append(time.perf_counter()))  # copies share it
    results, windows = {}, []
    try:
        for overlap in (False, True):
            source = BuildingLatency(fast_target)
            source.timed = []
            ev = Evaluator(default_workspace, fast_target, source, early=EarlyStop(accuracy_shards=2), host_lock=lock, overlap=overlap)
            results[overlap] = ev.evaluate(CompressionConfig.identity())
            windows += source.timed
    finally:
        hook.remove()
    for result in results.values():
        assert result.ok, result.error
    assert results[True].metrics.accuracy == results[False].metrics.accuracy
    assert "accuracy_beside_s" not in results[False].timings
    assert results[True].timings["accuracy_beside_s"] > 0  # read during the 0.4 s "build"
    assert reads and not [t for t in reads for start, end in windows if start <= t <= end]  # never while timed


@pytest.mark.parametrize("variant", ["vit", "distilled"])
def test_every_compression_family_reads_the_same_through_the_thread_s_copy(variant):
    """The thread reads a deep copy of the candidate: int8, int4, fp16, W8A8, low-rank and pruned
    layers copy and give the same predictions (the same accuracy, the same logits)."""
    from tests.targets.test_compile import _compressed, _variants

    model = _compressed(_variants()[variant], "every-family")
    torch.manual_seed(2)
    data = torch.utils.data.TensorDataset(torch.randn(96, 3, 16, 16), torch.randint(0, 5, (96,)))
    assert BackgroundAccuracy(model, data, 3).finish() == accuracy_in_shards(model, data, 3)
    with torch.inference_mode():
        assert torch.equal(copy.deepcopy(model)(data.tensors[0]), model(data.tensors[0]))


def test_stopped_for_timing_it_reads_nothing_until_finish(data):
    bg = BackgroundAccuracy(Slow(16, 4, delay=0.05), data, 1)
    time.sleep(0.08)
    bg.stop_for_timing()
    stopped = time.perf_counter()
    n = len(READS)
    time.sleep(0.25)  # several "timings", the host lock taken and given back between them
    assert len(READS) == n and not [t for t, _ in READS if t >= stopped]
    assert bg.finish()[1] == len(data)


def test_auto_reads_beside_the_build_only_once_a_reading_is_known_to_be_slow(tmp_path, monkeypatch, default_workspace, fast_target):
    """``overlap="auto"`` (the default): the first trial reads as before and times it; later ones
    read beside the build only where a full reading takes BESIDE_MIN_S or more (the default
    model's 269 images take well under that: never)."""
    import vitune.search.evaluate as evaluate
    from vitune.compression.config import CompressionConfig, LinearConfig
    from vitune.models.layers import discover

    monkeypatch.setenv("VITUNE_CACHE_DIR", str(tmp_path))
    if torch.get_num_threads() < 2:
        pytest.skip("one PyTorch thread: nothing is read beside the build")
    linears = discover(default_workspace.model).linears
    configs = [CompressionConfig.identity()] + [CompressionConfig.make({linears[i].name: LinearConfig("int8", None)}) for i in range(2)]
    ev = evaluate.Evaluator(default_workspace, fast_target, BuildingLatency(fast_target))
    assert [("accuracy_beside_s" in ev.evaluate(c).timings) for c in configs[:2]] == [False, False]
    monkeypatch.setattr(evaluate, "BESIDE_MIN_S", 0.0)
    assert "accuracy_beside_s" in ev.evaluate(configs[2]).timings
    with pytest.raises(ValueError, match="overlap"):
        evaluate.Evaluator(default_workspace, fast_target, BuildingLatency(fast_target), overlap="yes")

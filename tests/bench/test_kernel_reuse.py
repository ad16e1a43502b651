"""The kernel-reuse bench compares the two builds of each candidate (bench/kernel_reuse.py)."""

import torch

from tests.bench import load_bench
from vitune.compression.config import CompressionConfig, LinearConfig
from vitune.compression.pipeline import compress
from vitune.models.layers import discover


def test_each_candidate_is_built_both_ways_compared_and_timed(tiny_vit, tiny_calib, fast_target):
    bench = load_bench("kernel_reuse")
    first = discover(tiny_vit).linears[0].name
    models = [tiny_vit, compress(tiny_vit, CompressionConfig.make({first: LinearConfig("fp32", 8)}), calibration=tiny_calib)]
    rows = bench.compare(models, torch.randn(1, 1, 8, 8), fast_target, rounds=2, log=lambda *_: None)
    assert [r["equal"] for r in rows] == [True, True]
    assert rows[1]["kernels_reused"] > 0  # the second candidate shares the first one's blocks
    assert rows[0]["workloads"] is None  # built without a tuner: no database to count from
    assert all(r["latency_ms"]["shipped"] > 0 and r["ratio"] > 0 and r["control_ratio"] > 0 for r in rows)
    s = bench.summary(rows)
    assert s["all_equal"] and s["ratio"]["spearman"] is None  # two candidates rank nothing
    assert set(s["build_s_median"]) == {"shipped", "reused", "control"}


def test_spearman_ranks():
    bench = load_bench("kernel_reuse")
    assert bench.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert bench.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0


def test_without_rounds_nothing_is_timed(tiny_vit, fast_target):
    bench = load_bench("kernel_reuse")
    rows = bench.compare([tiny_vit], torch.randn(1, 1, 8, 8), fast_target, rounds=0, log=lambda *_: None)
    assert rows[0]["equal"] and rows[0]["latency_ms"] is None and rows[0]["ratio"] is None
    assert "ratio" not in bench.summary(rows)

"""bench/kernels.py: every kernel of a build, counted and timed alone."""

import sys

import torch

from tests.bench import ROOT, load_bench


def _kernels():
    sys.path.insert(0, str(ROOT / "bench"))  # bench/kernels.py reads configurations with bench/value.py
    return load_bench("kernels")


def test_every_kernel_the_build_calls_is_counted_and_timed(tiny_vit, fast_target):
    from vitune.targets.tuning import Tuner

    kernels = _kernels()
    row = kernels.profile_build(tiny_vit, torch.randn(1, 1, 8, 8), fast_target, Tuner(fast_target, "off", 1), repeat=2)
    rows = row["kernels"]
    assert rows and all(r["ms_each"] and r["ms_each"] > 0 for r in rows), rows
    assert row["kernel_calls"] == sum(r["calls"] for r in rows)
    assert any(r["name"].startswith("attention") and r["calls"] == 2 for r in rows)  # one fused attention per block
    assert [r["ms_total"] for r in rows] == sorted((r["ms_total"] for r in rows), reverse=True)
    assert row["build_ms"] > 0 and abs(row["kernels_ms"] - sum(r["ms_total"] for r in rows)) < 1e-12

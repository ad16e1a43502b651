"""The analytical model's estimated CPU peaks follow the instructions the host's int8 kernels get."""

import os

import pytest


@pytest.mark.parametrize("flags, int8_over_fp32", [
    ({"avx2", "fma", "avx512f", "avx512_vnni"}, 4.0),  # vpdpbusd: vitune's packed VNNI kernel
    ({"avx2", "fma", "avx_vnni"}, 4.0),
    ({"avx2", "fma"}, 1.0),  # no VNNI: TVM's generic integer code, at best fp32's speed (measured)
])
def test_estimated_int8_peak_credits_int8_only_where_the_cpu_has_vnni(monkeypatch, flags, int8_over_fp32):
    import vitune.costmodels.analytical as analytical
    from vitune.targets import load_target

    monkeypatch.setattr(analytical, "cpu_flags", lambda: flags)
    monkeypatch.setattr(analytical, "cpu_clock_ghz", lambda: 3.0)
    peaks, bandwidth, estimated = analytical.roofline_facts(load_target("local-cpu"))
    assert estimated and bandwidth > 0
    assert peaks["int8"] == pytest.approx(int8_over_fp32 * peaks["fp32"])
    cores = load_target("local-cpu").hardware.cores or os.cpu_count()
    assert peaks["fp32"] == pytest.approx(cores * 3.0 * (64 if "avx512f" in flags else 32))

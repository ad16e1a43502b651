"""The analytical cost model: a roofline estimate per kernel from the target profile's facts.

Each kernel of a candidate (see :mod:`vitune.costmodels.workloads`) takes
``max(FLOPs / peak(dtype), bytes / memory bandwidth)``; the model's latency is the sum. Peaks
per dtype and bandwidth come from the profile's ``[hardware]`` table; for this machine's CPU,
missing values are estimated from the detected cores, clock and vector width (and say so).
Uncalibrated, the number is a lower bound that ranks candidates; once any measurements of the
target exist, ``fit`` calibrates ``latency = scale · roofline + overhead`` by least squares.
Everywhere its numbers appear they carry the label ``analytical (uncalibrated)`` or
``analytical (calibrated on N)``.
"""

from __future__ import annotations

import os

import numpy as np

from vitune.costmodels.model import CostModel, fit_positive_line, positive, register_cost_model
from vitune.costmodels.workloads import Kernel
from vitune.errors import ConfigError
from vitune.targets.host import cpu_clock_ghz, cpu_flags

_PEAK_NAMES = {"float32": "fp32", "float16": "fp16", "int8": "int8"}


def roofline_facts(profile) -> tuple[dict[str, float], float, bool]:
    """``(peak GFLOP/s per dtype, bandwidth GB/s, estimated?)`` of a target."""
    hw = profile.hardware
    peaks = {k: v for k, v in hw.peak_gflops if v > 0}
    bandwidth = hw.memory_bandwidth_gbs
    estimated = False
    if "fp32" not in peaks or bandwidth <= 0:
        if not profile.is_native or profile.device_kind != "cpu":
            raise ConfigError(
                f"target {profile.name} ({profile.source}): the analytical cost model needs [hardware] "
                "peak_gflops.fp32 and memory_bandwidth_gbs"
            )
        flags = cpu_flags()
        per_cycle = 64 if "avx512f" in flags else 32 if {"avx2", "fma"} <= flags else 8
        clock = hw.clock_ghz or cpu_clock_ghz()
        cores = hw.cores or os.cpu_count() or 1
        peaks.setdefault("fp32", cores * clock * per_cycle)
        # int8 × int8 → int32 matmuls: vpdpbusd with VNNI (vitune.targets.int8, ~3x the fp32
        # kernel on Zen 5); without it TVM's generic integer code, at best as fast as fp32 (a
        # w8a8 model tuned here at 16 trials: 0.99x the uncompressed one, Zen 3 without VNNI;
        # 1.76x slower with schedules tuned on another CPU: bench/results/seeds-digits_base-znver3.json)
        vnni = bool({"avx512_vnni", "avx_vnni"} & flags)
        peaks.setdefault("int8", peaks["fp32"] * (4 if vnni else 1))
        bandwidth = bandwidth if bandwidth > 0 else 10.0 * min(cores, 4)
        estimated = True
    peaks.setdefault("fp16", peaks["fp32"])
    peaks.setdefault("int8", peaks["fp32"])
    return peaks, bandwidth, estimated


def roofline_ms(kernels: list[Kernel], peaks: dict[str, float], bandwidth_gbs: float) -> float:
    total = 0.0
    for k in kernels:
        peak = peaks.get(_PEAK_NAMES.get(k.dtype, "fp32"), peaks["fp32"]) if k.kind == "mm" else peaks["fp32"]
        total += k.calls * max(k.flops / (peak * 1e9), k.bytes / (bandwidth_gbs * 1e9))
    return total * 1e3


@register_cost_model("analytical")
class AnalyticalModel(CostModel):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.scale, self.overhead_ms, self.calibrated_on = 1.0, 0.0, 0
        self.ratio = 1.0  # the proportional fit, where the line reads zero or less

    def label(self) -> str:
        return f"analytical (calibrated on {self.calibrated_on})" if self.calibrated_on else "analytical (uncalibrated)"

    def estimate(self, kernels, context) -> float:
        peaks, bandwidth, _ = roofline_facts(context.profile)
        return roofline_ms(kernels, peaks, bandwidth)

    def fit(self, samples, context):
        from vitune.costmodels.workloads import KernelCache

        cache = context.kernels if context is not None else KernelCache()
        x = np.array([self.estimate([k for w in s.workloads for k in cache.by_key(w)], context) for s in samples])
        y = np.array([s.latency_ms for s in samples])
        scale, overhead, self.ratio = fit_positive_line(x, y) if len(x) else (1.0, 0.0, 1.0)
        self.scale, self.overhead_ms, self.calibrated_on = float(scale), float(overhead), len(x)
        self.fitted_samples = len(x)
        return self

    def _predict(self, candidate, context):
        from vitune.costmodels.workloads import model_kernels

        estimate = self.estimate(model_kernels(candidate, context.example, context.kernels), context)
        return positive(self.scale, self.overhead_ms, self.ratio, estimate), None, self.label()

    def state(self) -> dict:
        return {"scale": self.scale, "overhead_ms": self.overhead_ms, "calibrated_on": self.calibrated_on, "ratio": self.ratio}

    def set_state(self, state: dict) -> None:
        self.scale, self.overhead_ms, self.calibrated_on = state["scale"], state["overhead_ms"], state["calibrated_on"]
        self.ratio = float(state.get("ratio", self.scale))

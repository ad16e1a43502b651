"""What this machine's CPU is: model name, instruction-set flags, clock, and a short record of
them for results that depend on it (a tuning seed's origin, a bench's JSON). The host a session
gets can change between sessions (the same VM name on a Zen 3 without AVX-512 one day, a Zen 4
with AVX-512 and bf16 the next): latencies are only comparable on the same record."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def _cpuinfo_field(name: str) -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(name):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` says."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    """The CPU's instruction-set flags (``/proc/cpuinfo``; empty where it cannot be read)."""
    return set((_cpuinfo_field("flags") or "").split())


def cpu_clock_ghz() -> float:
    """The CPU's maximum (else current) clock, 2.5 GHz where it cannot be read."""
    try:
        import psutil

        freq = psutil.cpu_freq()
        if freq and (freq.max or freq.current):
            return (freq.max or freq.current) / 1000.0
    except Exception:  # noqa: BLE001 -- psutil raises platform-specific errors
        pass
    return 2.5


def describe() -> dict:
    """This machine as results should record it: CPU model, LLVM's name for it, cores, and the
    instruction sets that change which kernels and runtimes are fastest (AVX-512, VNNI, bf16)."""
    flags = cpu_flags()
    try:
        from tvm.target import codegen

        mcpu = str(codegen.llvm_get_system_cpu())
    except Exception:  # noqa: BLE001 -- no TVM (or no LLVM in it): the rest still describes the host
        mcpu = ""
    return {
        "cpu": cpu_model(), "mcpu": mcpu, "cores": os.cpu_count(), "machine": platform.machine(),
        "avx512": "avx512f" in flags, "vnni": bool({"avx512_vnni", "avx_vnni"} & flags), "bf16": "avx512_bf16" in flags,
    }

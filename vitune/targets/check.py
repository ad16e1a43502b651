"""``vitune targets check``: can this target build, link, reach its device and run?

Each step prints one line; the first that fails says exactly what is missing (the TVM
target, the cross compiler, the tracker, the device key, the GPU) and the check stops there.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class CheckReport:
    target: str
    steps: list[tuple[str, bool, str]] = field(default_factory=list)  # (step, ok, detail)
    latency_ms: float | None = None

    @property
    def ok(self) -> bool:
        return all(ok for _, ok, _ in self.steps)

    def add(self, step: str, ok: bool, detail: str) -> bool:
        self.steps.append((step, ok, detail))
        return ok


def probe_model():
    """A 2-block ViT on 8×8 inputs: every operator a real candidate has, built in seconds."""
    import torch
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(img_size=8, patch_size=4, in_chans=1, num_classes=5, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2.0)
    return model.eval(), torch.randn(1, 1, 8, 8)


def check_target(profile) -> CheckReport:
    from vitune.targets.compile import compile_model, export_library, library_arch
    from vitune.targets.measure import time_compiled
    from vitune.targets.runner import runner_for

    report = CheckReport(profile.name)
    model, example = probe_model()
    t0 = time.perf_counter()
    try:
        compiled = compile_model(model, example, profile)
    except Exception as err:
        report.add("build", False, f"TVM could not build the probe model for {profile.tvm_target}: {err}")
        return report
    report.add("build", True, f"probe model built for {profile.tvm_target} in {time.perf_counter() - t0:.1f} s")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            lib = export_library(compiled, Path(tmp) / "probe.so", profile)
            arch = library_arch(lib)
        except Exception as err:
            report.add("link", False, str(err).strip().splitlines()[-1])
            return report
    linker = profile.cross_compiler or "the host compiler"
    report.add("link", True, f"shared library for {arch} linked with {linker}")
    runner = runner_for(profile)
    problem = runner.check()
    if not report.add("device", problem is None, problem or f"device reachable ({profile.runner_spec.describe()})"):
        return report
    m = time_compiled(compiled, example, profile)
    if report.add("run", m.ok, m.error or f"probe latency {m.latency_ms:.4f} ms ({profile.protocol.statistic} of {len(m.samples_ms)})"):
        report.latency_ms = m.latency_ms
    return report

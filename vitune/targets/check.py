"""``vitune targets check``: can this target build, link, reach its device and run?

Each step prints one line; the first that fails says exactly what is missing (the TVM
target, the cross compiler, the tracker, the device key, the GPU) and the check stops there.
A failing tool's output is condensed to its cause (the linker's ``cannot find crti.o``, not
its command line) and kept whole in a log whose path the line names. The check runs in a child
process (:func:`check_contained`): a crash in TVM or LLVM is a failed step, not a dead
interpreter.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

# lines that say why a tool failed, most telling first
_CAUSES = (r"cannot find", r"undefined reference", r"No such file", r"not found", r"fatal error", r"error:", r"Error")


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
        report.add("build", False, f"TVM could not build the probe model for {profile.tvm_target}: "
                   f"{cause_line(str(err), f'targets-check-{profile.name}-build')}")
        return report
    report.add("build", True, f"probe model built for {profile.tvm_target} in {time.perf_counter() - t0:.1f} s")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            lib = export_library(compiled, Path(tmp) / "probe.so", profile)
            arch = library_arch(lib)
        except Exception as err:
            report.add("link", False, cause_line(str(err), f"targets-check-{profile.name}-link"))
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


def cause_line(output: str, log_name: str) -> str:
    """One line for a tool's failure: the line of ``output`` that says why (a linker's
    ``cannot find crti.o``, a compiler's ``error:``), else its last line; the whole output goes
    to ``<cache>/logs/<log_name>.log``, named in the line."""
    from vitune.paths import cache_dir

    lines = [ln.strip() for ln in output.strip().splitlines() if ln.strip()]
    cause = next((ln for pattern in _CAUSES for ln in lines if re.search(pattern, ln)), lines[-1] if lines else "no output")
    try:
        log = cache_dir() / "logs" / f"{log_name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(output)
        return f"{cause[:400]} (full output: {log})"
    except OSError:
        return cause[:400]


def check_contained(ref: str, timeout_s: float = 900.0) -> CheckReport:
    """:func:`check_target` of the profile ``ref`` (a name or a file) in a child process: a
    segfault in TVM or LLVM, or a check that never ends, is a failed step with its reason."""
    code = ("import json, sys; from dataclasses import asdict; from vitune.targets.check import check_target; "
            "from vitune.targets.profile import load_target; "
            "print('VITUNE-CHECK ' + json.dumps(asdict(check_target(load_target(sys.argv[1])))), flush=True)")
    name = Path(ref).stem if ref.endswith(".toml") else ref
    try:
        import os

        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))  # the child finds what this process finds
        proc = subprocess.run([sys.executable, "-c", code, ref], capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        report = CheckReport(name)
        report.add("check", False, f"the check did not finish within {timeout_s:.0f} s")
        return report
    for line in proc.stdout.splitlines():
        if line.startswith("VITUNE-CHECK "):
            doc = json.loads(line[len("VITUNE-CHECK "):])
            return CheckReport(doc["target"], [tuple(s) for s in doc["steps"]], doc["latency_ms"])
    report = CheckReport(name)
    if proc.returncode < 0:
        import signal

        try:
            how = signal.Signals(-proc.returncode).name
        except ValueError:
            how = f"signal {-proc.returncode}"
        report.add("check", False, cause_line(proc.stderr, f"targets-check-{name}-crash").replace(
            " (full output", f" — TVM/LLVM crashed ({how}) while checking the target (full output", 1) if proc.stderr.strip()
            else f"TVM/LLVM crashed ({how}) while checking the target")
    else:
        report.add("check", False, cause_line(proc.stderr or proc.stdout, f"targets-check-{name}-error"))
    return report


__all__ = ["CheckReport", "asdict", "cause_line", "check_contained", "check_target", "probe_model"]

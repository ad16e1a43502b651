"""The one compile path: ``torch.export`` → TVM Relax → build for a target profile.

Weights stay *inputs* of the compiled function (``keep_params_as_input``), so the build keeps
the stored tensors as they are (int8 weights stay int8, fp16 stay fp16) instead of folding
them into fp32 constants, and the artifact ships them beside the library.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

ARTIFACT_LIB = "model.so"
ARTIFACT_PARAMS = "params.npz"
ARTIFACT_META = "artifact.json"


@dataclass
class CompiledModel:
    """A built TVM executable with its weights, ready for a runner."""

    executable: object  # tvm.relax.VMExecutable
    params: list[np.ndarray]
    input_shape: tuple[int, ...]
    input_dtype: str
    target: dict
    timings: dict[str, float] = field(default_factory=dict)  # export_s, import_s, build_s


def export_relax(model: torch.nn.Module, example: torch.Tensor):
    """Return ``(relax IRModule, [weights as numpy])`` for ``model`` called on ``example``."""
    from tvm import relax
    from tvm.relax.frontend.torch import from_exported_program

    with torch.no_grad():
        program = torch.export.export(model.eval(), (example,))
    mod = from_exported_program(program, keep_params_as_input=True)
    mod, params = relax.frontend.detach_params(mod)
    return mod, [p.numpy() for p in params.get("main", [])]


def build(mod, profile):
    """Build an IRModule for ``profile``'s TVM target; returns the executable."""
    import tvm

    return tvm.compile(mod, target=profile.tvm())


def compile_model(model: torch.nn.Module, example: torch.Tensor, profile) -> CompiledModel:
    t0 = time.perf_counter()
    from tvm import relax  # noqa: F401  (import cost counted apart from export)

    t1 = time.perf_counter()
    mod, params = export_relax(model, example)
    t2 = time.perf_counter()
    executable = build(mod, profile)
    t3 = time.perf_counter()
    return CompiledModel(
        executable,
        params,
        tuple(example.shape),
        str(example.dtype).replace("torch.", ""),
        dict(profile.tvm_target),
        {"import_tvm_s": t1 - t0, "export_s": t2 - t1, "build_s": t3 - t2},
    )


def save_artifact(compiled: CompiledModel, out_dir: Path, profile) -> dict[str, str]:
    """Write ``model.so`` (TVM library), ``params.npz`` (weights, in call order), ``artifact.json``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    lib = out_dir / ARTIFACT_LIB
    compiled.executable.export_library(str(lib))
    np.savez(out_dir / ARTIFACT_PARAMS, *compiled.params)
    meta = {
        "library": ARTIFACT_LIB,
        "params": ARTIFACT_PARAMS,
        "entry": "main",
        "input_shape": list(compiled.input_shape),
        "input_dtype": compiled.input_dtype,
        "call": "vm['main'](input, *params) with params in the order arr_0, arr_1, ... of params.npz",
        "target": profile.tvm_target,
        "target_name": profile.name,
    }
    (out_dir / ARTIFACT_META).write_text(json.dumps(meta, indent=2))
    return {"library": str(lib), "params": str(out_dir / ARTIFACT_PARAMS), "meta": str(out_dir / ARTIFACT_META)}


def load_artifact(out_dir: Path) -> CompiledModel:
    """Load what :func:`save_artifact` wrote (for a target this process can run)."""
    import tvm

    meta = json.loads((out_dir / ARTIFACT_META).read_text())
    lib = tvm.runtime.load_module(str(out_dir / meta["library"]))
    with np.load(out_dir / meta["params"]) as npz:
        params = [npz[f"arr_{i}"] for i in range(len(npz.files))]
    return CompiledModel(lib, params, tuple(meta["input_shape"]), meta["input_dtype"], meta["target"])

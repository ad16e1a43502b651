"""What a build needs in memory: the bytes it ships and the most it holds while it runs.

* :class:`MemoryPlan` — read from the build itself: the weights the runtime holds (each build
  parameter at its stored dtype), the storages TVM's static memory planner allocates for the
  intermediate and output tensors (``StaticPlanBlockMemory`` lets tensors whose lifetimes do not
  overlap share a storage; the VM allocates each storage once per run), and the input. Its
  :attr:`~MemoryPlan.peak_bytes` is their sum: the memory a batch-1 run needs on the device,
  kernel workspaces aside (scratch buffers inside a kernel, small next to the storages: the
  check below bounds what they add).
* :func:`runtime_heap_bytes` — the same quantity measured on this machine's CPU: the exported
  library is loaded in a fresh process and the bytes the TVM runtime adds to the C heap
  (glibc's ``mallinfo2``: in-use arena blocks plus mmapped blocks) while it loads the weights
  and the input and runs once are read (its pooled allocator keeps every storage it allocated).
  It is the check of the plan (``tests/targets/test_memory.py``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from dataclasses import dataclass
from functools import cache

import numpy as np


PAGE = 4096  # the VM's pooled allocator hands out whole pages (its default page size)
MIB = 2**20  # memory limits and budgets are in MiB (and [hardware] memory_gb in GiB)


@dataclass(frozen=True)
class MemoryPlan:
    weights_bytes: int  # the build's parameters as the runtime holds them
    activations_bytes: int  # every planned storage (intermediates and outputs) of one run
    io_bytes: int  # the input tensor
    storages: int = 0  # how many storages the planner made

    @property
    def peak_bytes(self) -> int:
        return self.weights_bytes + self.activations_bytes + self.io_bytes

    def to_dict(self) -> dict:
        return {"weights_bytes": self.weights_bytes, "activations_bytes": self.activations_bytes, "io_bytes": self.io_bytes,
                "storages": self.storages, "peak_bytes": self.peak_bytes}


def _nbytes(shape, dtype: str) -> int:
    import tvm

    size = 1
    for dim in shape:
        size *= int(dim)
    t = tvm.DataType(dtype)
    return size * ((t.bits + 7) // 8) * t.lanes


def planned_storage(mod, target) -> tuple[int, int] | None:
    """``(bytes, storages)`` of what the VM allocates for one call of ``main``: ``mod`` (a Relax
    module as it goes into ``tvm.compile``) is taken through the first half of TVM's build
    pipeline, up to and including static memory planning, and every storage it allocates (and
    every tensor allocated outside a storage) is summed, each rounded up to whole pages as the VM's
    pooled allocator allocates it. None where a size is not static or planning fails: the build
    goes on without a plan."""
    import tvm
    from tvm import relax
    from tvm.ir import Op

    passes = [relax.transform.LegalizeOps(), relax.transform.RewriteDataflowReshape(), relax.transform.ToNonDataflow(),
              relax.transform.RemovePurityChecking(), relax.transform.CallTIRRewrite(), relax.transform.StaticPlanBlockMemory()]
    storage_op = Op.get("relax.memory.alloc_storage")
    tensor_op = Op.get("relax.builtin.alloc_tensor")
    found: list[int] = []

    def visit(expr) -> None:
        if not isinstance(expr, relax.Call):
            return
        if expr.op == storage_op:
            found.append(int(expr.args[0].values[0]))
        elif expr.op == tensor_op:
            found.append(_nbytes(expr.args[0].values, expr.args[1].value))

    try:
        with target:
            planned = tvm.transform.Sequential(passes)(mod)
        for gvar, func in planned.functions_items():
            if gvar.name_hint == "main" and isinstance(func, relax.Function):
                relax.analysis.post_order_visit(func, visit)
    except Exception:  # a pass that fails, a dynamic size: the plan is a figure, never a reason for a build to fail
        return None
    return sum(-(-size // PAGE) * PAGE for size in found), len(found)


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


@cache
def _mallinfo2():
    path = ctypes.util.find_library("c")
    libc = ctypes.CDLL(path) if path else None
    fn = getattr(libc, "mallinfo2", None) if libc is not None else None
    if fn is not None:
        fn.restype = _MallInfo2
    return fn


def heap_in_use() -> int | None:
    """Bytes of the C heap in use (all arenas plus mmapped blocks), or None without glibc's
    ``mallinfo2`` (glibc < 2.33, musl, macOS)."""
    fn = _mallinfo2()
    if fn is None:
        return None
    info = fn()
    return int(info.uordblks + info.hblkhd)


def runtime_heap_bytes(compiled, profile) -> int | None:
    """The C-heap bytes the TVM runtime allocates to run ``compiled`` once on this machine's CPU,
    as a deployment would: the library is exported, loaded in a fresh process, and the heap is
    read around loading the weights and the input and one run (the pooled allocator keeps every
    storage it allocated). Loading the library and making the VM are left out: that is code and
    loader state, not the model's data. None where the heap cannot be read."""
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    from vitune.targets.compile import save_artifact

    if heap_in_use() is None:
        return None
    with tempfile.TemporaryDirectory(prefix="vitune-memory-") as tmp:
        save_artifact(compiled, Path(tmp), profile)
        out = subprocess.run([sys.executable, "-m", "vitune.targets.memory", tmp], capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"measuring the runtime's memory failed: {(out.stderr.strip().splitlines() or ['no output'])[-1]}")
    return int(out.stdout.split()[-1])


def _measure_artifact(folder: str) -> int:
    """In a fresh process: load an artifact, then the heap bytes its weights, input and first
    run add."""
    from pathlib import Path

    import tvm
    from tvm import relax

    from vitune.targets.compile import load_artifact
    from vitune.targets.runner import _input, _weights

    compiled = load_artifact(Path(folder))
    dev = tvm.cpu(0)
    vm = relax.VirtualMachine(compiled.runtime_module(), dev)
    x = np.zeros(compiled.input_shape, dtype=compiled.input_dtype)
    tvm.get_global_func("runtime.NumThreads")()  # the CPU thread pool is made here: runtime state, not the model's
    before = heap_in_use() or 0
    weights = _weights(compiled, dev)
    out = vm["main"](_input(x, dev), *weights)
    after = heap_in_use() or 0
    del out, weights
    return after - before


def over_limit(peak_bytes: int | None, profile) -> str | None:
    """Why a build whose run needs ``peak_bytes`` cannot run on ``profile``'s device (its
    ``[hardware] memory_gb``, when the profile states one), or None."""
    limit_gb = float(getattr(profile.hardware, "memory_gb", 0.0) or 0.0)
    if peak_bytes is None or limit_gb <= 0 or peak_bytes <= limit_gb * 1024 * MIB:
        return None
    return (f"peak memory {peak_bytes / MIB:.1f} MiB exceeds target {profile.name}'s [hardware] memory_gb = {limit_gb:g} "
            f"({limit_gb * 1024:.0f} MiB)")


if __name__ == "__main__":  # python -m vitune.targets.memory ARTIFACT_DIR (see runtime_heap_bytes)
    import sys

    print(_measure_artifact(sys.argv[1]))

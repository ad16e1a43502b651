"""The one compile path: ``torch.export`` → TVM Relax → build for a target profile.

Weights stay *inputs* of the compiled function (``keep_params_as_input``), so the build keeps
the stored tensors as they are (int8 weights stay int8, fp16 stay fp16) instead of folding
them into fp32 constants, and the artifact ships them beside the library.
"""

from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitune.targets.memory import MemoryPlan
from vitune.targets.native import captured_native_stderr

ARTIFACT_LIB = "model.so"
ARTIFACT_PARAMS = "params.npz"
ARTIFACT_META = "artifact.json"
TRANSFORM_PARAMS = "main_transform_params"  # what LiftTransformParams names the weights' layout transform


@dataclass
class CompiledModel:
    """A built TVM executable with its weights, ready for a runner."""

    executable: Any  # tvm.relax.VMExecutable (what export_library writes)
    params: list[np.ndarray]
    input_shape: tuple[int, ...]
    input_dtype: str
    target: dict
    timings: dict[str, float] = field(default_factory=dict)  # export_s, build_s, codegen_s
    module: Any = None  # the linked runtime module, for targets this process can run
    prepared: Any = None  # what the runner's prepare() left (a VM, an RPC session...)
    tuning: Any = None  # the TuneReport of the build (None: untuned)
    memory: Any = None  # its vitune.targets.memory.MemoryPlan (None: not planned, e.g. loaded from disk)
    prepacked: bool = False  # params are laid out for the tuned kernels (see prepack_params)
    # a vitune.targets.kernels.KernelBuild where the kernels came from this process's library:
    # the executable runs here only; shipped() links the same code into one library
    kernels: Any = None

    def shipped(self) -> "CompiledModel":
        """This build as it ships: itself, or, for a build whose kernels came from this
        process's :class:`~vitune.targets.kernels.KernelLibrary`, the same kernels and entry
        function linked into one library (what ``relax.build`` makes; code generation again,
        no export or Relax passes)."""
        if self.kernels is None:
            return self
        with filtered_native_stderr():
            executable = self.kernels.shipped()
        return replace(self, executable=executable, module=None, prepared=None, kernels=None, timings=dict(self.timings))

    @property
    def peak_memory_bytes(self) -> int | None:
        """What one batch-1 run of the build needs (its :class:`MemoryPlan`'s peak), None unplanned."""
        return self.memory.peak_bytes if self.memory is not None else None

    def runtime_module(self):
        """The runtime module, made once from the executable (artifacts loaded from disk carry it)."""
        if self.module is None:
            self.module = self.executable.jit()
        return self.module


def export_relax(model: torch.nn.Module, example: torch.Tensor):
    """Return ``(relax IRModule, [weights as numpy])`` for ``model`` called on ``example``."""
    from tvm import relax
    from tvm.relax.frontend.torch import from_exported_program

    from vitune.targets.decompose import Undecomposable, decompose

    with torch.no_grad():
        program = torch.export.export(model.eval(), (example,))
    drop_metadata_asserts(program)
    try:  # core ATen without tracing the program again (the same program, see vitune.targets.decompose)
        decompose(program)
        decomposed = True
    except Undecomposable:
        decomposed = False  # the program is untouched: the import decomposes it
    mod = from_exported_program(program, keep_params_as_input=True, run_ep_decomposition=not decomposed)
    mod = int8_matmuls(mod)
    mod, params = relax.frontend.detach_params(mod)
    return mod, [p.numpy() for p in params.get("main", [])]


def drop_metadata_asserts(program) -> int:
    """Remove ``program``'s ``aten._assert_tensor_metadata`` nodes (in place); returns how many.

    ``torch.export`` records one beside every ``Tensor.to(dtype)`` (a check that the tensor
    still has the dtype, device and layout it had when traced). TVM's importer maps it to
    nothing, but the decomposition before it walks every node (and where
    :func:`vitune.targets.decompose.decompose` can't, :meth:`ExportedProgram.run_decompositions`
    traces every node again: a quantized deit_tiny candidate holds 110-140 of them, 0.6-0.8 s of
    that trace). The Relax module is the same without them (structurally equal)."""
    graph, dropped = program.graph, 0
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target is torch.ops.aten._assert_tensor_metadata.default and not node.users:
            graph.erase_node(node)
            dropped += 1
    if dropped:
        program.graph_module.recompile()
    return dropped


def int8_matmuls(mod):
    """Make integer matmuls of int8 operands real int8 × int8 → int32 matmuls.

    PyTorch has no int8 matmul on CPU, so :class:`~vitune.compression.modules.W8A8Linear`
    widens both int8 operands to int32 and multiplies; the importer then emits
    ``matmul(astype(a, int32), astype(b, int32))`` (with a float32 result type). This rewrites
    it to ``astype(matmul(a, b, out_dtype="int32"), result dtype)`` on the int8 tensors (through
    the reshape / transpose between them), which is what int8 kernels (VNNI, dp4a, SDOT) are
    selected on. Integer products are exact, so the result is unchanged.
    """
    from tvm import relax
    from tvm.relax.dpl import is_op, rewrite_call, wildcard

    a8, b8 = wildcard(), wildcard()
    wa, wb = is_op("relax.astype")(a8), is_op("relax.astype")(b8)
    ra = is_op("relax.reshape")(wa, wildcard())
    pb = is_op("relax.permute_dims")(wb)
    lhs, rhs = ra | wa, pb | wb
    matmul = is_op("relax.matmul")(lhs, rhs)

    def dtype(expr):
        return str(getattr(getattr(expr, "ty", None), "dtype", None))

    def rewrite(call, m):
        a, b = m[a8], m[b8]
        if dtype(a) != "int8" or dtype(b) != "int8" or dtype(m[wa]) != "int32" or dtype(m[wb]) != "int32":
            return call
        left = relax.op.reshape(a, m[ra].args[1]) if ra in m else a
        right = relax.op.permute_dims(b, m[pb].attrs.axes) if pb in m else b
        return relax.op.astype(relax.op.matmul(left, right, out_dtype="int32"), dtype(call))

    for gv, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            mod[gv] = rewrite_call(matmul, rewrite, func)
    return mod


# Native warnings TVM prints on every build of a ViT that carry no information for a user
# (the gather in the patch/position embedding is always in bounds; a "compiled" VM executable
# announces, empty, the scope of its saved and loaded functions).
_NOISE = ("Fast mode segfaults when there are out-of-bounds indices", "Warning: Scope Saving:", "Warning: Scope Loaded:")


@contextmanager
def filtered_native_stderr():
    """Route the C++ side's stderr through a filter that drops :data:`_NOISE` lines."""
    with captured_native_stderr() as out:
        yield
    for line in out.text.splitlines():
        if line.strip() and not any(n in line for n in _NOISE):
            print(line, file=sys.stderr)


def build(mod, profile, tuner=None, kernels=None):
    """Build an IRModule for ``profile``'s TVM target; returns ``(executable, tuning report,
    (planned storage bytes, storages) or None, layout, kernel build or None)``.

    With a :class:`~vitune.targets.tuning.Tuner`, workloads get their tuned schedules from the
    target's database (tuning unseen ones if the tuner's mode and budget allow). ``layout``
    (None: none needed): the tuned kernels read their weights in the layouts their schedules
    chose, and ``layout`` is an executable of its own whose ``main_transform_params`` lays the
    weights out once (:func:`compile_model` runs it); the executable does not carry it.
    With a :class:`~vitune.targets.kernels.KernelLibrary` (CPU targets run in this process), the
    kernels it holds are reused and the new ones added to it (the kernel build is returned; the
    executable then runs in this process only, see :meth:`CompiledModel.shipped`).
    """
    import tvm
    from tvm import relax

    from vitune.targets.graph import optimize
    from vitune.targets.memory import planned_storage
    from vitune.targets.schedule import schedule_data_movement, schedule_gpu_int8_matmuls

    target = profile.tvm()
    report = None
    # NT matmuls, fusable activations, fast softmax / GELU, CPU attention, tuned int8 on VNNI
    mod = optimize(mod, target, vnni=tuner is not None and tuner.mode != "off")
    with filtered_native_stderr():
        if tuner is not None:
            mod, report = tuner.prepare(mod)  # legalized, fused, tuned kernels applied
        layout = None
        if any(gv.name_hint == TRANSFORM_PARAMS for gv in mod.functions):
            mod, layout = only(mod, "main"), only(mod, TRANSFORM_PARAMS)
        mod = schedule_data_movement(mod, target)  # CPU: parallel, vectorised data movement
        mod = schedule_gpu_int8_matmuls(mod, target)  # CUDA: W8A8 matmuls without TVM 0.27's failing int8 tensor-core rule
        storage = planned_storage(mod, target)
        # "compiled": the VM's own functions (allocations, argument passing, one call per kernel)
        # are generated code instead of bytecode the VM interprets: 4-6 % of a tuned
        # digits_vit_base build at rank 24 (0.266 against 0.282 ms), the calls' share
        made = kernels.build(mod, target) if kernels is not None else None
        executable = made.executable if made is not None else relax.build(mod, target=target, exec_mode="compiled")
        if layout is not None:
            # the weights' layout transform runs once, at build time (prepack_params): built
            # apart, unoptimised and interpreted, it is not code generation every build pays for
            # at -O3 (a third of the LLVM IR of a w8a8 digits_vit_base build), and not shipped
            # (with a kernel library its kernels are reused too: most of a study's builds lay out
            # the same weights' layouts, and the JIT of ~80 new kernels, even unoptimised, took
            # 1.4 s of a deit_tiny trial)
            plain = tvm.target.Target({**dict(target.export()), "opt-level": 0})
            made_layout = kernels.build(layout, plain, exec_mode="bytecode") if kernels is not None else None
            layout = made_layout.executable if made_layout is not None else relax.build(layout, target=plain, exec_mode="bytecode")
        return executable, report, storage, layout, made


def only(mod, name: str):
    """``mod`` with the Relax function ``name`` and the kernels it calls, nothing else."""
    import tvm
    from tvm import relax

    entry = mod.get_global_var(name)
    called = {entry}

    def visit(expr) -> None:
        if isinstance(expr, tvm.ir.GlobalVar):
            called.add(expr)

    relax.analysis.post_order_visit(mod[entry], visit)
    return tvm.IRModule({gv: f for gv, f in mod.functions.items() if gv in called}, attrs=mod.attrs, global_infos=mod.global_infos)


def prepack_params(layout, params: list[np.ndarray]) -> list[np.ndarray]:
    """The weights in the layouts the tuned kernels read: ``layout`` (the build's
    ``main_transform_params``, built apart) run once on this machine's CPU (the build is for it:
    prepacking is on for native CPU targets only)."""
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(layout, tvm.cpu())
    out = vm[TRANSFORM_PARAMS]([tvm.runtime.tensor(p) for p in params])
    return [t.numpy() for t in out]


def compile_model(model: torch.nn.Module, example: torch.Tensor, profile, tuner=None, reuse_kernels: bool = False) -> CompiledModel:
    """``model`` exported, built for ``profile`` (tuned kernels with a ``tuner``) and its weights
    laid out. ``reuse_kernels``: kernels this process compiled before are reused where the
    target allows it (:func:`vitune.targets.kernels.reusable`): what a search does for its
    trials; the build runs in this process and :meth:`CompiledModel.shipped` is what ships."""
    from vitune.targets.kernels import LIBRARY, reusable

    t0 = time.perf_counter()
    from tvm import relax  # noqa: F401  (import cost counted apart from export)

    t1 = time.perf_counter()
    mod, params = export_relax(model, example)
    t2 = time.perf_counter()
    executable, report, storage, layout, made = build(mod, profile, tuner, LIBRARY if reuse_kernels and reusable(profile) else None)
    t3 = time.perf_counter()
    timings = {"import_tvm_s": t1 - t0, "export_s": t2 - t1, "build_s": t3 - t2}
    if report is not None:
        timings["tune_s"] = report.seconds
        timings["build_s"] -= report.seconds + report.waited_s
        if report.waited_s:
            timings["tune_wait_s"] = report.waited_s
    compiled = CompiledModel(executable, params, tuple(example.shape), str(example.dtype).replace("torch.", ""), dict(profile.tvm_target), timings)
    compiled.tuning = report
    compiled.kernels = made
    if layout is not None:
        t4 = time.perf_counter()
        compiled.params, compiled.prepacked = prepack_params(layout, params), True
        timings["prepack_s"] = time.perf_counter() - t4
    if storage is not None:
        compiled.memory = MemoryPlan(weights_bytes=int(sum(p.nbytes for p in compiled.params)), activations_bytes=storage[0],
                                     io_bytes=int(example.numel() * example.element_size()), storages=storage[1])
    return compiled


def link_options(profile) -> dict:
    """Keyword arguments of ``export_library`` for ``profile``: its ``cross_compiler``, if it
    names one (checked on PATH: a missing one is a one-line error naming it)."""
    import shutil

    from vitune.errors import ConfigError

    if not profile.cross_compiler:
        return {}
    if shutil.which(profile.cross_compiler) is None:
        raise ConfigError(
            f"cross compiler {profile.cross_compiler!r} of target {profile.name} was not found on PATH "
            "(Debian: apt-get install gcc-aarch64-linux-gnu)"
        )
    from tvm.support.cc import cross_compiler

    return {"fcompile": cross_compiler(profile.cross_compiler)}


def export_library(compiled: CompiledModel, path: Path, profile) -> Path:
    """Link the build into a shared library for the target (cross-compiled where the profile
    names a ``cross_compiler``; GPU code is embedded in a host library)."""
    kwargs = link_options(profile)
    compiled = compiled.shipped()
    with filtered_native_stderr():
        compiled.executable.export_library(str(path), **kwargs)
    return Path(path)


def save_artifact(compiled: CompiledModel, out_dir: Path, profile) -> dict[str, str]:
    """Write ``model.so`` (TVM library), ``params.npz`` (weights, in call order), ``artifact.json``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    lib = out_dir / ARTIFACT_LIB
    export_library(compiled, lib, profile)
    np.savez(out_dir / ARTIFACT_PARAMS, *compiled.params)
    meta = {
        "library": ARTIFACT_LIB,
        "params": ARTIFACT_PARAMS,
        "entry": "main",
        "input_shape": list(compiled.input_shape),
        "input_dtype": compiled.input_dtype,
        "call": "vm['main'](input, *params) with params in the order arr_0, arr_1, ... of params.npz",
        # prepacked: the weights are already in the layouts the tuned kernels read (laid out at
        # build time from the model's weights); pass them as they are
        "prepacked": compiled.prepacked,
        "target": profile.tvm_target,
        "target_host": profile.tvm_host,
        "target_name": profile.name,
        "device": profile.device_kind,
        "memory": compiled.memory.to_dict() if compiled.memory is not None else None,
    }
    (out_dir / ARTIFACT_META).write_text(json.dumps(meta, indent=2))
    return {"library": str(lib), "params": str(out_dir / ARTIFACT_PARAMS), "meta": str(out_dir / ARTIFACT_META)}


def load_artifact(out_dir: Path) -> CompiledModel:
    """Load what :func:`save_artifact` wrote (for a target this process can run)."""
    import tvm

    meta = json.loads((out_dir / ARTIFACT_META).read_text())
    with filtered_native_stderr():
        lib = tvm.runtime.load_module(str(out_dir / meta["library"]))
    with np.load(out_dir / meta["params"]) as npz:
        params = [npz[f"arr_{i}"] for i in range(len(npz.files))]
    return CompiledModel(lib, params, tuple(meta["input_shape"]), meta["input_dtype"], meta["target"], module=lib, prepacked=bool(meta.get("prepacked", False)))


ELF_MACHINES = {0x3E: "x86-64", 0xB7: "aarch64", 0x28: "arm", 0xF3: "riscv"}


def library_arch(path: Path) -> str:
    """The architecture an ELF shared library was built for (from its header's e_machine)."""
    head = Path(path).read_bytes()[:20]
    if head[:4] != b"\x7fELF":
        raise ValueError(f"{path} is not an ELF file")
    machine = int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")
    return ELF_MACHINES.get(machine, f"e_machine {machine:#x}")


def device_code_kinds(compiled: CompiledModel) -> list[str]:
    """Kinds of the device modules a build carries (e.g. ``["cuda"]`` for a CUDA build)."""
    mod = compiled.executable.mod if hasattr(compiled.executable, "mod") else compiled.executable
    kinds, stack = [], list(getattr(mod, "imports", []))
    while stack:
        m = stack.pop()
        kinds.append(str(m.kind))
        stack.extend(getattr(m, "imports", []))
    return kinds

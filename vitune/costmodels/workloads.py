"""Workloads of a candidate and their features, read from the Relax/TIR graph TVM builds.

A model runs as a sequence of *workloads*: every leaf module that computes (a linear layer in any
of its compressed forms, a layer norm, an activation, the patch-embedding convolution) and the
attention core of every attention module (reshape → scaled-dot-product attention → reshape,
whose cost changes with pruned heads). :func:`model_workloads` lists them with one forward pass
on the eager model (hooks record each workload's input shape); each workload has a signature
(its class, input shape, tensors' shapes and dtypes), which is all its latency depends on.

:func:`workload_kernels` turns one workload into the kernels TVM runs for it: the workload alone
goes through the same path as a whole model (``torch.export`` → Relax, int8 matmul rewrite,
transpose fusion) and the default Relax pipeline (legalize, fuse); each resulting TIR function
gives a :class:`Kernel` (kind, dtype, FLOPs from TIR analysis, bytes its buffers hold). Results
are kept in a persistent cache keyed by signature (:class:`KernelCache`), shared by all targets,
studies and processes, so a workload is lowered once and later predictions are dictionary
lookups.

What is not a workload (residual adds, class-token concat, position-embedding add, pooling)
is the same for every configuration of a model; cost models absorb it in a fitted intercept.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from vitune.jsontable import JsonTable

FEATURE_SPEC_VERSION = 1
MM_DTYPES = ("float32", "float16", "int8")
KINDS = ("mm", "reduce", "elem")
_SKIP = (nn.Identity, nn.Dropout)


@dataclass(frozen=True)
class Kernel:
    """One TIR function of a lowered workload."""

    name: str
    kind: str  # mm (matmul / conv) | reduce (norms, softmax) | elem (everything else)
    dtype: str  # the dtype it computes in (a matmul: its first operand's)
    flops: float
    bytes: float  # bytes of all its buffers (inputs and outputs)
    calls: int = 1


@dataclass(frozen=True)
class Workload:
    signature: str
    module: nn.Module  # what to export to lower it (a leaf module, or an AttentionCore)
    inputs: tuple[tuple[tuple[int, ...], torch.dtype], ...]  # (shape, dtype) of each input

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        return tuple(torch.zeros(shape, dtype=dtype) for shape, dtype in self.inputs)


class AttentionCore(nn.Module):
    """What a timm ``Attention`` computes between its ``qkv`` and ``proj`` linears."""

    def __init__(self, num_heads: int, head_dim: int):
        super().__init__()
        self.num_heads, self.head_dim = int(num_heads), int(head_dim)

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        b, n, _ = qkv.shape
        q, k, v = qkv.reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        x = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return x.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim)


def _is_attention(module: nn.Module) -> bool:
    return all(hasattr(module, a) for a in ("qkv", "proj", "num_heads", "head_dim"))


def _tensor_sig(t: torch.Tensor) -> str:
    return f"{_dtype(t.dtype)}{list(t.shape)}"


def _dtype(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _module_sig(module: nn.Module) -> str:
    tensors = [f"{n}:{_tensor_sig(t)}" for n, t in (*module.named_parameters(recurse=False), *module.named_buffers(recurse=False))]
    attrs = [f"{k}={v}" for k, v in sorted(vars(module).items()) if not k.startswith("_") and isinstance(v, (bool, int, str))]
    return f"{type(module).__module__}.{type(module).__qualname__}({','.join(attrs)})[{';'.join(tensors)}]"


def structure_hash(prefix: str, named_modules, length: int) -> str:
    """A hash of ``prefix`` and every ``(name, module)``'s structure: what latency depends on."""
    h = hashlib.sha256(prefix.encode())
    for name, module in named_modules:
        h.update(f"{name}:{_module_sig(module)}".encode())
    return h.hexdigest()[:length]


def forward_with_hooks(model: nn.Module, example: torch.Tensor, handles: list) -> None:
    """Run ``model`` once on ``example`` (no grad), then remove the hook ``handles``."""
    try:
        with torch.inference_mode():
            model(example)
    finally:
        for h in handles:
            h.remove()


def model_workloads(model: nn.Module, example: torch.Tensor) -> list[Workload]:
    """The workloads ``model`` runs on inputs shaped like ``example``, in call order."""
    found: list[Workload] = []
    handles = []

    sigs: dict[int, str] = {}  # one module's own signature, computed once per call

    def leaf_hook(module, args, _out):
        specs = tuple((tuple(a.shape), a.dtype) for a in args if isinstance(a, torch.Tensor))
        if id(module) not in sigs:
            sigs[id(module)] = _module_sig(module)
        sig = sigs[id(module)] + "<" + ",".join(f"{_dtype(d)}{list(s)}" for s, d in specs) + ">"
        found.append(Workload(sig, module, specs))

    def attention_hook(module, args, _out):
        x = args[0]
        h, d = int(module.num_heads), int(module.head_dim)
        spec = ((*x.shape[:-1], 3 * h * d), x.dtype)
        found.append(Workload(f"AttentionCore(heads={h},head_dim={d})<{_dtype(spec[1])}{list(spec[0])}>", AttentionCore(h, d), (spec,)))

    for module in model.modules():
        if _is_attention(module):
            handles.append(module.register_forward_hook(attention_hook))
        elif not any(True for _ in module.children()) and not isinstance(module, _SKIP):
            handles.append(module.register_forward_hook(leaf_hook))
    forward_with_hooks(model, example, handles)
    return found


def _kind(name: str) -> str:
    if "matmul" in name or "conv" in name or "dense" in name:
        return "mm"
    if any(k in name for k in ("layer_norm", "softmax", "sum", "mean", "max", "min", "norm")):
        return "reduce"
    return "elem"


def lower(workload: Workload) -> list[Kernel]:
    """Lower one workload through TVM and describe its TIR kernels (this is the slow part)."""
    import tvm
    from tvm import relax
    from tvm.s_tir.analysis import estimate_tir_flops

    from vitune.targets.compile import filtered_native_stderr
    from vitune.targets.graph import optimize

    module = workload.module.eval()
    with torch.no_grad(), filtered_native_stderr():
        program = torch.export.export(_Call(module), workload.example_inputs())
    mod = _from_program(program)
    mod = optimize(mod)  # as every build does (less the CPU attention kernel: the same arithmetic as the matmuls and softmax it replaces)
    with tvm.target.Target({"kind": "llvm"}):
        mod = relax.get_pipeline("zero")(mod)
    calls: dict[str, int] = {}
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            value = binding.value
            if isinstance(value, relax.Call) and getattr(value.op, "name", "") == "relax.call_tir":
                gv = value.args[0].name_hint
                calls[gv] = calls.get(gv, 0) + 1
    kernels = []
    for gv, func in mod.functions.items():
        if not isinstance(func, tvm.tirx.PrimFunc) or gv.name_hint not in calls:
            continue
        buffers = [p for p in func.params if getattr(p, "shape", None) is not None]
        size = sum(_numel(b.shape) * tvm.runtime.DataType(b.dtype).bits / 8 for b in buffers)
        kind = _kind(gv.name_hint)
        dtype = str(buffers[0].dtype if kind == "mm" and buffers else buffers[-1].dtype if buffers else "float32")
        try:
            flops = float(estimate_tir_flops(tvm.IRModule({"main": func})))
        except Exception:  # analysis gives up on some data-movement kernels: they do no arithmetic
            flops = 0.0
        kernels.append(Kernel(gv.name_hint, kind, dtype, flops, float(size), calls[gv.name_hint]))
    return kernels


class _Call(nn.Module):
    """Wrap a module so it exports as a top-level program with positional tensor inputs."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, *xs):
        return self.module(*xs)


def _from_program(program):
    from tvm.relax.frontend.torch import from_exported_program

    from vitune.targets.compile import int8_matmuls

    return int8_matmuls(from_exported_program(program, keep_params_as_input=False))


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


class KernelCache(JsonTable):
    """Workload signature key → its kernels (target-independent: shared by every target)."""

    def __init__(self, path: Path | None = None):
        from vitune.paths import cache_dir

        super().__init__(Path(path) if path else cache_dir() / "costmodels" / f"kernels-v{FEATURE_SPEC_VERSION}.json")

    @staticmethod
    def key(signature: str) -> str:
        return hashlib.sha256(signature.encode()).hexdigest()[:20]

    def key_of(self, workload: Workload) -> str:
        """The workload's key, lowering it first if it was never seen."""
        key = self.key(workload.signature)
        if key not in self.data:
            self.put(key, [asdict(k) for k in lower(workload)])
        return key

    def by_key(self, key: str) -> list[Kernel]:
        if key not in self.data:
            raise KeyError(f"workload {key} is not in the kernel cache {self.path} (was it deleted?)")
        return [Kernel(**k) for k in self.data[key]]

    def kernels(self, workload: Workload) -> list[Kernel]:
        return self.by_key(self.key_of(workload))

    def __len__(self) -> int:
        return len(self.data)


def model_kernels(model: nn.Module, example: torch.Tensor, cache: KernelCache) -> list[Kernel]:
    """Every kernel ``model`` runs (workloads lowered once, then read from ``cache``)."""
    out: list[Kernel] = []
    for workload in model_workloads(model, example):
        out.extend(cache.kernels(workload))
    return out


def feature_names() -> list[str]:
    names = [f"mm.{d}.{q}" for d in MM_DTYPES for q in ("flops", "bytes", "count")]
    names += [f"{k}.{q}" for k in KINDS[1:] for q in ("flops", "bytes", "count")]
    return names + ["total.flops", "total.bytes", "total.count"]


def aggregate(kernels: list[Kernel]) -> dict[str, float]:
    """The fixed-length feature vector of a model: FLOPs, bytes and kernel count per kind/dtype."""
    feats = dict.fromkeys(feature_names(), 0.0)
    for k in kernels:
        group = f"mm.{k.dtype if k.dtype in MM_DTYPES else 'float32'}" if k.kind == "mm" else k.kind
        for prefix in (group, "total"):
            feats[f"{prefix}.flops"] += k.flops * k.calls
            feats[f"{prefix}.bytes"] += k.bytes * k.calls
            feats[f"{prefix}.count"] += k.calls
    return feats

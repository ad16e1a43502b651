"""Default schedules vitune gives where TVM has none, or a failing one: the CPU's data-movement
kernels no tuning record covers, and a GPU's int8 matmuls.

TVM's CPU pipeline has no default schedule: a kernel without a tuning record lowers to plain
serial loops, on one core and unvectorised. Tuning covers the compute kernels (see
``tuning._tunable``); the data movement a ViT imports with (the head split after ``qkv``:
reshape, permute, slice, scale; the head merge after attention; broadcasts and concatenation)
is left out of tuning on purpose, and on deit_tiny these serial kernels took 1.8 of 21 ms.

:func:`schedule_data_movement` gives every unscheduled, purely injective kernel (every block
spatial) one fixed schedule: producers inlined into the last block, its outer loops fused and
run in parallel on the runtime's thread pool, its innermost loop vectorised by the target's
vector width when that divides it. It legalizes and fuses the module first (Relax's "zero"
pipeline, what ``tvm.compile`` would do first anyway; on a module already through it, as after
tuning, it changes nothing) and guarantees the same results: only the loop structure changes,
never a value.
A kernel the rule cannot schedule (a reduction, a block that will not inline) keeps TVM's
default lowering. CPU (``llvm``) targets only: the GPU pipeline schedules its kernels itself,
except the int8 matmuls of W8A8 layers, which :func:`schedule_gpu_int8_matmuls` schedules
(TVM 0.27's own rule for them fails the build).
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import ScheduleRule


def vector_lanes(target, dtype_bits: int) -> int:
    """Elements of ``dtype_bits`` in one of ``target``'s vectors (LLVM's width; 128 bits if unknown)."""
    from tvm.target.codegen import llvm_get_vector_width

    try:
        bits = int(llvm_get_vector_width(target))
    except Exception:  # a target LLVM cannot describe
        bits = 0
    return max(2, (bits if bits > 0 else 128) // max(dtype_bits, 8))


class DataMovement(ScheduleRule):
    """Inline, fuse outer loops → parallel, vectorise the innermost loop (see module doc)."""

    def apply(self, func, target, tunable):  # noqa: ARG002  (ScheduleRule's signature)
        if not isinstance(func, tirx.PrimFunc):
            return None
        try:
            return self._schedule(func, target)
        except Exception:  # anything unexpected: keep TVM's default lowering for this kernel
            return None

    @staticmethod
    def _schedule(func, target):
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if not infos or not all(b.is_injective() for b in infos):
            return None
        for b in infos[:-1]:
            sch.compute_inline(b.block_rv)
        last = infos[-1].block_rv
        loops = sch.get_loops(last)
        if len(loops) < 2:
            return None
        sch.parallel(sch.fuse(*loops[:-1]))
        inner = loops[-1]
        extent = sch.get(inner).extent
        writes = sch.get(last).writes
        lanes = vector_lanes(target, writes[0].source.dtype.bits if writes else 32)
        if isinstance(extent, tirx.IntImm) and int(extent) % lanes == 0:
            sch.vectorize(sch.split(inner, [None, lanes])[1])
        return sch


def views_for_reshapes(mod):
    """``mod`` (legalized) with every reshape kernel ``main`` calls replaced by a view of its
    input's memory (``vm.builtin.reshape``), and the kernels no function calls any more dropped."""
    from tvm import relax

    return relax.transform.DeadCodeElimination()(relax.transform.RewriteDataflowReshape()(mod))


def schedule_data_movement(mod, target):
    """``mod`` legalized, fused and with :class:`DataMovement` applied to its unscheduled
    injective kernels; the module itself when ``target`` is not a CPU (``llvm``) target."""
    from tvm import relax
    from tvm.s_tir.dlight.base.transform import ApplyDefaultSchedule

    if target.kind.name != "llvm":
        return mod
    with target:
        fused = views_for_reshapes(relax.get_pipeline("zero")(mod)).clone()  # (the schedule pass writes into the module it is given)
        return ApplyDefaultSchedule(DataMovement())(fused)


class UntensorizedInt8Matmul(ScheduleRule):
    """int8 × int8 → int32 matmuls on a CUDA GPU, scheduled by dlight's GPU matmul rule without
    tensor cores. TVM 0.27's default CUDA pipeline hands them to its int8 tensor-core rule
    (``MatmulInt8Tensorization``), whose software pipelining fails the build (``Check failed:
    (it != fragment_info_.end())`` in ``inject_software_pipeline.cc``, seen on every W8A8 layer of
    a ViT for ``sm_90``): no W8A8 candidate could be built for a GPU. This rule takes those
    kernels first and schedules them as the same rule does for a GPU without tensor cores
    (tiled, shared-memory staged, int32 accumulation: exact); every other kernel is left to the
    default rules."""

    def apply(self, func, target, tunable):
        import tvm
        from tvm.s_tir.dlight.gpu import Matmul
        from tvm.s_tir.dlight.gpu.matmul import get_in_out_dtypes

        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "cuda":
            return None
        try:
            sch = s_tir.Schedule(func)
            blocks = normalize_prim_func(sch)
        except Exception:  # noqa: BLE001 -- not a kernel this rule understands
            return None
        def int8_matmul(info) -> bool:
            try:
                return get_in_out_dtypes(sch.get(info.block_rv)) == ("int8", "int32")
            except Exception:  # noqa: BLE001 -- a block without the matmul's buffers
                return False

        if not any(int8_matmul(info) for info in blocks or []):
            return None
        older = tvm.target.Target({**dict(target.export()), "arch": "sm_60"})  # no tensor cores: dlight's plain matmul schedule
        return Matmul().apply(func, older, tunable)


def schedule_gpu_int8_matmuls(mod, target):
    """``mod`` legalized and fused, with its int8 matmul kernels scheduled by
    :class:`UntensorizedInt8Matmul` (the default CUDA pipeline schedules the rest, and skips
    these); the module itself on other targets."""
    from tvm import relax
    from tvm.s_tir.dlight.base.transform import ApplyDefaultSchedule

    if target.kind.name != "cuda":
        return mod
    with target:
        fused = relax.get_pipeline("zero")(mod).clone()
        return ApplyDefaultSchedule(UntensorizedInt8Matmul())(fused)

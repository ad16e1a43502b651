"""int8 × int8 matmuls on x86 VNNI (``vpdpbusd``): the kernel ``w8a8`` layers run on such CPUs.

A :class:`~vitune.compression.modules.W8A8Linear` imports as ``matmul(x_q, W_qᵀ)`` on int8
operands with an int32 result (:func:`vitune.targets.compile.int8_matmuls`). Left as it is,
MetaSchedule tiles it like any integer matmul, without VNNI: slower than the fp32 kernel it
replaces. Tensorizing it with MetaSchedule's VNNI rule on the ``[N, K]`` weight gives wrong
results in TVM 0.27 (the 16×4 weight tile is matched without its row stride:
``bench/results/vnni-probe.json``). So :func:`vnni_matmuls` rewrites each such matmul into:

1. the activation made unsigned, ``x_u = x_q + 128`` (``vpdpbusd`` multiplies u8 by s8), an
   elementwise step that fuses into the quantize before it;
2. the weight in the layout ``vpdpbusd`` reads, ``[N/16, K/4, 16, 4]`` (N padded with zero rows to
   a multiple of 16): each 16×4 tile contiguous. It depends on the weight only, so a build with
   prepacked weights lays it out once (``main_transform_params``);
3. :func:`vnni_kernel`, ``C = x_u · Wᵀ`` in int32, which MetaSchedule's VNNI rule tensorizes;
4. ``C − 128 · Σ_k W[n, k]`` (the column sums, a weight-only constant too): the product of the
   signed operands, exactly (integer arithmetic: the layer's output is unchanged).

Measured on the quickstart model's shapes (65 tokens, Zen 5, 64 trials): 9.1 µs for 192→576 and
15.5 µs for 768→192, against 32 and 42 µs for vitune's tuned fp32 kernels of the same layers (timed
alone in another run: ``bench/results/vnni-probe.json``, ``bench/kernels.py``).

TVM 0.27's registered ``dot_16x4_vnni`` intrinsic calls ``llvm.x86.avx512.vpdpbusd.512`` with
int32x16 operands, which the LLVM it bundles declares as ``<64 x i8>``: every tensorized
candidate fails to build. :func:`register_vnni` re-registers it with byte-vector operands.
"""

from __future__ import annotations


LANES, GROUP = 16, 4  # vpdpbusd: 16 int32 lanes, each the dot product of 4 u8 × s8 pairs
KERNEL = "matmul_vnni"  # "matmul" in the name: a tunable workload (vitune.targets.tuning._tunable)
_registered = False


def has_vnni(target) -> bool:
    """Whether ``target`` is an x86 LLVM target whose CPU has AVX-512 VNNI."""
    from tvm.target import codegen

    if target.kind.name != "llvm":
        return False
    try:
        return bool(codegen.target_has_features("avx512vnni", target))
    except Exception:  # an LLVM without x86, a target it does not know: no VNNI
        return False


def untensorized_int8(profile) -> bool:
    """Whether ``profile`` is an x86 CPU target without VNNI, where a w8a8 layer's int8 × int8 →
    int32 matmul is left to TVM's generic integer code (no ``vpdpbusd``; :func:`vnni_matmuls`
    leaves it alone): at best as fast as the fp32 kernel it replaces once tuned on the CPU, and
    slower with schedules tuned on another (``bench/results/seeds-digits_base-znver3.json``). False
    elsewhere (VNNI, other ISAs, GPUs: their int8 paths are their own)."""
    from tvm.target import codegen

    try:
        target = profile.tvm()
        if target.kind.name != "llvm":
            return False
        return bool(codegen.target_has_features("sse2", target)) and not has_vnni(target)
    except Exception:  # an LLVM without x86, a target it does not know: not such a target
        return False


def register_vnni() -> None:
    """Re-register ``dot_16x4_vnni`` with ``vpdpbusd``'s operands as the bundled LLVM declares
    them (idempotent; needs ``tvm.s_tir.tensor_intrin`` imported)."""
    global _registered
    if _registered:
        return
    from tvm.s_tir import TensorIntrin
    from tvm.s_tir.tensor_intrin.x86 import VNNI_DOT_16x4_INTRIN, dot_product_16x4_u8i8i32_desc
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def vnni(
        A: T.Buffer((4,), "uint8", offset_factor=1),  # type: ignore[valid-type]
        B: T.Buffer((16, 4), "int8", offset_factor=1),  # type: ignore[valid-type]
        C: T.Buffer((16,), "int32", offset_factor=1),  # type: ignore[valid-type]
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            a_i32 = T.reinterpret(A.vload([0], "uint8x4"), dtype="int32")
            a_u8x64 = T.reinterpret(T.broadcast(a_i32, 16), dtype="uint8x64")
            b_i8x64 = B.vload([0, 0], dtype="int8x64")
            c_i32x16 = C.vload([0], dtype="int32x16")
            C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"), c_i32x16, a_u8x64, b_i8x64, dtype="int32x16"
            )

    TensorIntrin.register(VNNI_DOT_16x4_INTRIN, dot_product_16x4_u8i8i32_desc, vnni, override=True)
    _registered = True


def vnni_compute(a, w):
    """TE: ``C[..., n_padded] = A_u8[..., k] · W`` (int32) with ``W`` packed ``[n_padded/16, k/4, 16, 4]``
    (leading axes of ``A`` kept, so the layer's epilogue fuses into the kernel without a reshape)."""
    from tvm import te

    *lead, k = a.shape
    n_padded = w.shape[0] * LANES
    r = te.reduce_axis((0, k), name="k")

    def dot(*idx):
        *rows, j = idx
        return te.sum(a[(*rows, r)].astype("int32") * w[j // LANES, r // GROUP, j % LANES, r % GROUP].astype("int32"), axis=r)

    return te.compute((*lead, n_padded), dot, name="C")


def vnni_kernel(lead: tuple[int, ...], k: int, n_padded: int):
    """:func:`vnni_compute` as a PrimFunc of static shapes, in int64 like the kernels Relax
    legalizes (a fused kernel's buffers must agree on their shapes' type)."""
    from tvm import te, tirx

    def shape(*dims):
        return [tirx.IntImm("int64", d) for d in dims]

    a = te.placeholder(shape(*lead, k), "uint8", name="A")
    w = te.placeholder(shape(n_padded // LANES, k // GROUP, LANES, GROUP), "int8", name="W")
    return te.create_prim_func([a, w, vnni_compute(a, w)]).without_attr("global_symbol")


def pack_weight(w, n: int, k: int):
    """Relax: the ``[n, k]`` int8 weight as ``[n_padded/16, k/4, 16, 4]`` (zero rows past n)."""
    from tvm import relax

    n_padded = -(-n // LANES) * LANES
    if n_padded != n:
        w = relax.op.nn.pad(w, [0, n_padded - n, 0, 0])
    w = relax.op.reshape(w, (n_padded // LANES, LANES, k // GROUP, GROUP))
    return relax.op.permute_dims(w, [0, 2, 1, 3]), n_padded


def vnni_matmuls(mod, target):
    """``mod`` with every static ``matmul(int8 x, permute_dims(int8 W [N, K]), out_dtype=int32)``
    computed by :func:`vnni_kernel` (K a multiple of 4) — on CPUs with VNNI; others get ``mod``."""
    from tvm import relax
    from tvm.relax.dpl import is_op, rewrite_call, wildcard

    from vitune.targets.graph import static_shape

    if not has_vnni(target):
        return mod
    x, w, v = wildcard(), wildcard(), wildcard()
    quantized = is_op("relax.astype")(v)  # the layer's quantize: astype(clip(round(x / s)), int8)
    flat = is_op("relax.reshape")(quantized, wildcard())
    transposed = is_op("relax.permute_dims")(w)
    pattern = is_op("relax.matmul")(flat | quantized | x, transposed)
    bb = relax.BlockBuilder(mod)
    kernels: dict[tuple, object] = {}  # (leading axes, K, padded N) → its kernel

    def rewrite(call, m):
        operand = m[flat] if flat in m else m[quantized] if quantized in m else m[x]
        xs, ws, out = static_shape(operand), static_shape(m[w]), static_shape(call)
        if xs is None or ws is None or out is None or len(ws) != 2 or len(xs) < 2:
            return call
        if str(call.attrs.out_dtype) != "int32" or str(operand.ty.dtype) != "int8" or str(m[w].ty.dtype) != "int8":
            return call
        perm = m[transposed].attrs.axes
        if perm is not None and [int(a) for a in perm] != [1, 0]:
            return call
        (n, k), lead = ws, tuple(xs[:-1])
        if xs[-1] != k or k % GROUP or out != (*lead, n):
            return call
        source = static_shape(m[v]) if quantized in m and str(m[v].ty.dtype) in ("float32", "float16") else None
        if source is not None:
            # unsigned straight from the quantize's integral floats in [-127, 127]: it fuses into
            # the kernel that quantizes (a layer norm, an activation), in that kernel's shape
            unsigned = relax.op.astype(relax.op.add(m[v], relax.const(128.0, str(m[v].ty.dtype))), "uint8")
            lead = source[:-1]
        else:
            unsigned = relax.op.astype(relax.op.add(relax.op.astype(operand, "int16"), relax.const(128, "int16")), "uint8")
        packed, n_padded = pack_weight(m[w], n, k)
        if (lead, k, n_padded) not in kernels:
            kernels[(lead, k, n_padded)] = bb.add_func(vnni_kernel(lead, k, n_padded), KERNEL)
        c = relax.call_tir(kernels[(lead, k, n_padded)], [unsigned, packed], relax.TensorType((*lead, n_padded), "int32"))
        if n_padded != n:
            c = relax.op.strided_slice(c, axes=[len(lead)], begin=[0], end=[n])
        # 128 · Σ_k W[n, k]: from the weight alone (lifted with the packing where weights are prepacked)
        offset = relax.op.sum(relax.op.multiply(relax.op.astype(m[w], "int32"), relax.const(128, "int32")), axis=[1])
        exact = relax.op.subtract(c, offset)
        return exact if (*lead, n) == out else relax.op.reshape(exact, out)

    for gv, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            bb.update_func(gv, rewrite_call(pattern, rewrite, func))
    return bb.get()


def vnni_postprocs() -> list:
    """MetaSchedule's x86 postprocessors for a VNNI kernel, with :func:`scalar_intrinsic_loops`
    between the vectorizer and the tensorizer."""
    from tvm.s_tir.meta_schedule import postproc

    return [
        postproc.DisallowDynamicLoop(),
        postproc.RewriteParallelVectorizeUnroll(),
        scalar_intrinsic_loops(),
        postproc.RewriteReductionBlock(),
        postproc.RewriteTensorize(vectorize_init_loop=True),
        postproc.RewriteLayout(),
    ]


def scalar_intrinsic_loops():
    """A postprocessor that unrolls, instead of vectorizing, any loop around a block that will be
    tensorized: MetaSchedule vectorizes a kernel's innermost spatial loops, and when those are
    the tiles around the ``vpdpbusd`` call the candidate cannot build ("Cannot broadcast lanes=16
    to 64"): 45 of 72 sampled candidates of the 192 → 576 kernel failed that way."""
    from tvm import tirx
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.postproc import PyPostproc

    @derived_object
    class ScalarIntrinsicLoops(PyPostproc):
        def _initialize_with_tune_context(self, context) -> None:
            pass

        def apply(self, sch) -> bool:
            for gv, func in sch.mod.functions.items():
                if not isinstance(func, tirx.PrimFunc):
                    continue
                try:
                    todo = [sch.get_sblock("root", func_name=gv.name_hint)]
                except Exception:  # no root block: nothing MetaSchedule tensorizes
                    continue
                while todo:
                    block = todo.pop()
                    todo.extend(sch.get_child_blocks(block))
                    if "meta_schedule.auto_tensorize" not in sch.get(block).annotations:
                        continue
                    for loop in sch.get_loops(block):
                        if sch.get(loop).kind == tirx.ForKind.VECTORIZED:
                            sch.unroll(loop)
            return True

        def clone(self):
            return ScalarIntrinsicLoops()

    return ScalarIntrinsicLoops()

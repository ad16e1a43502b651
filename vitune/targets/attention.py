"""A fused attention kernel for CPU (``llvm``) targets: ``softmax(Q·Kᵀ)·V`` in one pass.

A ViT's attention imports as two batch matmuls with a softmax between them. Tuned one by one,
they were the slowest part of a tuned deit_tiny against ONNX Runtime (3.7 + 1.0 ms against 2.5
+ 0.35 ms): the token count (197) is prime, so MetaSchedule's tiles — which must divide a loop's
extent — cannot block its rows or columns, and the tuned softmax reduced each row serially.

:func:`fuse_attention` replaces ``matmul(softmax(matmul(q, kᵀ)), v)`` (with the reshapes and
broadcasts ``torch.export`` leaves between them) by one hand-scheduled TIR kernel,
:func:`attention_kernel`. For each head and block of ``rows`` query rows, run in parallel:

1. scores ``S = Q_rows · Kᵀ`` in a register tile of ``rows × (cols · lanes)`` accumulators,
   from Kᵀ padded with zero columns to a whole number of tiles (the pad is part of the transpose
   kernel that already writes Kᵀ, so it costs nothing); padded columns are set to −3e38;
2. each row's maximum and ``exp(S − max)`` — TVM's ``fast_exp`` polynomial (the one softmax uses
   after ``FastMathTransform``) — and their sum, vectorised over lanes; padded columns give
   exactly 0;
3. ``O = exp(S − max) · V``, in a register tile, scaled by ``1 / sum`` on the way out.

The last row block is shifted back to end at the last row (it recomputes a few rows with the
same values) instead of running a ragged tail. Results equal the unfused graph to float32
rounding (the sums are taken in another order). Shapes must be static and float32 (an fp16
attention, or a symbolic token count, is left as it was).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

STACK_FLOATS = 255  # floats in a local buffer that stays on the stack (TVM: kMaxStackAlloca = 1024 bytes)
NEG = -3.0e38  # a padded column's score: exp(NEG - max) is exactly 0 with fast_exp

# TVM's fast_exp (topi/elemwise.h, fast_exp_float32): clamp, split into 2^n and a polynomial
_EXP_HI, _EXP_LO = 88.3762626647950, -88.3762626647949
_LOG2E, _LN2 = 1.44269504088896341, 0.6931471805599453
_P = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)


def fast_exp(x):
    """``exp(x)`` for a float32 TIR expression, as ``topi.fast_exp`` computes it (vectorisable)."""
    from tvm import tirx

    def c(v):
        return tirx.const(v, "float32")

    xc = tirx.max(tirx.min(x, c(_EXP_HI)), c(_EXP_LO))
    n = tirx.floor(xc * c(_LOG2E) + c(0.5))
    f = xc - n * c(_LN2)
    y = c(_P[0])
    for p in _P[1:]:
        y = y * f + c(p)
    y = y * f * f + f + c(1.0)
    two_n = tirx.reinterpret("float32", tirx.shift_left(tirx.Cast("int32", n + c(127.0)), tirx.const(23, "int32")))
    return tirx.max(two_n * y, x)


@dataclass(frozen=True)
class Tiling:
    """How :func:`attention_kernel` tiles one shape: ``rows`` query rows per work item; score
    tiles of ``cols`` vectors of ``lanes``, over keys padded to ``npad``; output tiles of
    ``vcols`` vectors of ``vlanes`` (the largest power of two up to ``lanes`` dividing the value
    width)."""

    rows: int
    lanes: int
    cols: int
    npad: int
    vlanes: int
    vcols: int

    @classmethod
    def plan(cls, m: int, n: int, dv: int, lanes: int, accumulators: int, rows: int = 8) -> "Tiling":
        # a tile holds at most `accumulators` vectors (the target's vector registers less the
        # operands) and under 1 KiB: a larger local buffer is not a stack array LLVM keeps in
        # registers but a heap workspace (TVM's kMaxStackAlloca)
        rows = min(rows, m)
        cols = max(1, min(accumulators // rows, STACK_FLOATS // (rows * lanes), math.ceil(n / lanes)))
        vlanes = math.gcd(lanes, dv & -dv)
        chunks = dv // vlanes
        vfit = max(1, min(accumulators // rows, STACK_FLOATS // (rows * vlanes)))
        vcols = max(c for c in range(1, chunks + 1) if chunks % c == 0 and c <= vfit)
        width = cols * lanes
        return cls(rows, lanes, cols, math.ceil(n / width) * width, vlanes, vcols)


@functools.lru_cache(maxsize=256)
def attention_kernel(g: int, m: int, d: int, n: int, dv: int, plan: Tiling):
    """The TIR kernel ``o[g, m, dv] = softmax(q[g, m, d] · kt[g, d, npad][:, :, :n]) · v[g, n, dv]``
    tiled as ``plan`` says (see the module doc). ``q`` carries the attention scale.

    Made once per shape and plan in a process (TIR is immutable): parsing the script is ~70 ms,
    and a ViT has one attention per block, the same shape in every block and in every trial."""
    from tvm.script import tirx as T

    rows, lanes, cols, npad, vlanes, vcols = (getattr(plan, f) for f in ("rows", "lanes", "cols", "npad", "vlanes", "vcols"))
    width, vwidth = cols * lanes, vcols * vlanes
    tiles, vtiles = npad // width, dv // vwidth
    blocks = math.ceil(m / rows)
    accw = max(width, vwidth)

    @T.prim_func(private=True)
    def attention(q: T.Buffer((g, m, d), "float32"), kt: T.Buffer((g, d, npad), "float32"), v: T.Buffer((g, n, dv), "float32"), o: T.Buffer((g, m, dv), "float32")):
        T.func_attr({"tir.noalias": True, "tirx.is_scheduled": True})
        for item in T.parallel(g * blocks):
            s = T.decl_buffer((rows, npad), "float32", scope="global")
            acc = T.decl_buffer((rows, accw), "float32", scope="global")
            vec = T.decl_buffer((lanes,), "float32", scope="global")
            red = T.decl_buffer((rows, 2), "float32", scope="global")  # row max, row sum
            h = T.meta_var(item // blocks)
            r0 = T.meta_var(T.min(item % blocks * rows, m - rows))
            # 1. scores
            for jt in range(tiles):
                for i in T.unroll(rows):
                    for c in T.unroll(cols):
                        for l in T.vectorized(lanes):
                            acc[i, c * lanes + l] = T.float32(0)
                for k in range(d):
                    for i in T.unroll(rows):
                        for c in T.unroll(cols):
                            for l in T.vectorized(lanes):
                                acc[i, c * lanes + l] = acc[i, c * lanes + l] + q[h, r0 + i, k] * kt[h, k, jt * width + c * lanes + l]
                for i in T.unroll(rows):
                    for c in T.unroll(cols):
                        for l in T.vectorized(lanes):
                            s[i, jt * width + c * lanes + l] = acc[i, c * lanes + l]
            for i in range(rows):
                for j in range(npad - n):
                    s[i, n + j] = T.float32(NEG)
            # 2. exp(S - max), row sums
            for i in range(rows):
                for l in T.vectorized(lanes):
                    vec[l] = s[i, l]
                for c in range(1, npad // lanes):
                    for l in T.vectorized(lanes):
                        vec[l] = T.max(vec[l], s[i, c * lanes + l])
                red[i, 0] = vec[0]
                for l in range(1, lanes):
                    red[i, 0] = T.max(red[i, 0], vec[l])
                for l in T.vectorized(lanes):
                    vec[l] = T.float32(0)
                for c in range(npad // lanes):
                    for l in T.vectorized(lanes):
                        s[i, c * lanes + l] = fast_exp(s[i, c * lanes + l] - red[i, 0])
                        vec[l] = vec[l] + s[i, c * lanes + l]
                red[i, 1] = vec[0]
                for l in range(1, lanes):
                    red[i, 1] = red[i, 1] + vec[l]
                red[i, 1] = T.float32(1) / red[i, 1]
            # 3. O = exp(S - max) V / sum
            for vt in range(vtiles):
                for i in T.unroll(rows):
                    for c in T.unroll(vcols):
                        for l in T.vectorized(vlanes):
                            acc[i, c * vlanes + l] = T.float32(0)
                for k in range(n):
                    for i in T.unroll(rows):
                        for c in T.unroll(vcols):
                            for l in T.vectorized(vlanes):
                                acc[i, c * vlanes + l] = acc[i, c * vlanes + l] + s[i, k] * v[h, k, vt * vwidth + c * vlanes + l]
                for i in T.unroll(rows):
                    for c in T.unroll(vcols):
                        for l in T.vectorized(vlanes):
                            o[h, r0 + i, vt * vwidth + c * vlanes + l] = acc[i, c * vlanes + l] * red[i, 1]

    return attention


def _registers(target, lanes: int) -> int:
    """Accumulator vectors a register tile may hold: 24 of the 32 vector registers of AVX-512
    and AArch64, 12 of AVX2's 16 (the rest hold the operands)."""
    return 24 if lanes >= 16 or str(target.attrs.get("mtriple", "")).startswith("aarch64") else 12


def fuse_attention(mod, target):
    """``mod`` with every static float32 ``softmax(q·kᵀ)·v`` of its Relax functions computed by
    :func:`attention_kernel` — for CPU (``llvm``) targets; other targets get ``mod`` back."""
    from tvm import relax
    from tvm.relax.dpl import is_op, rewrite_call, wildcard

    from vitune.targets.graph import static_shape
    from vitune.targets.schedule import vector_lanes

    if target.kind.name != "llvm":
        return mod
    lanes = vector_lanes(target, 32)
    accumulators = _registers(target, lanes)
    q, kt, v = wildcard(), wildcard(), wildcard()

    def maybe(op, inner):
        return is_op(op)(inner, wildcard()) | inner

    scores = is_op("relax.matmul")(q, kt)
    soft = is_op("relax.nn.softmax")(maybe("relax.reshape", scores))
    out = is_op("relax.matmul")(maybe("relax.reshape", maybe("relax.broadcast_to", soft)), v)
    bb = relax.BlockBuilder(mod)

    def rewrite(call, m):
        shapes = [static_shape(m[x]) for x in (q, kt, v, scores)] + [static_shape(call)]
        if any(s is None or len(s) < 3 for s in shapes) or any(str(m[x].ty.dtype) != "float32" for x in (q, kt, v, scores, soft)):
            return call
        (sq, sk, sv, ss, so), axis = shapes, int(m[soft].attrs.axis)
        (rows_m, d), (d2, n), (n2, dv) = sq[-2:], sk[-2:], sv[-2:]
        batch = sq[:-2]
        if (d, n) != (d2, n2) or sk[:-2] != batch or sv[:-2] != batch or ss != (*batch, rows_m, n) or so != (*batch, rows_m, dv):
            return call
        # the softmax runs over each row of scores, and what reaches the second matmul is those
        # rows as they were (a reshape of leading axes, a broadcast that adds nothing)
        sm, left = static_shape(m[soft]), static_shape(call.args[0])
        if sm is None or sm[-2:] != (rows_m, n) or axis not in (-1, len(sm) - 1) or left != (*batch, rows_m, n) or math.prod(sm) != math.prod(left):
            return call
        g, plan = math.prod(batch), Tiling.plan(rows_m, n, dv, lanes, accumulators)
        kernel = bb.add_func(attention_kernel(g, rows_m, d, n, dv, plan), "attention")
        q3 = relax.op.reshape(m[q], (g, rows_m, d))
        k3 = relax.op.reshape(m[kt], (g, d, n))
        if plan.npad > n:
            k3 = relax.op.nn.pad(k3, [0, 0, 0, 0, 0, plan.npad - n])
        v3 = relax.op.reshape(m[v], (g, n, dv))
        fused = relax.call_tir(kernel, [q3, k3, v3], relax.TensorType((g, rows_m, dv), "float32"))
        return relax.op.reshape(fused, so)

    for gv, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            bb.update_func(gv, rewrite_call(out, rewrite, func))
    return bb.get()

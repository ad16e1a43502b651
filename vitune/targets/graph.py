"""Graph rewrites applied to every imported model before it is built (Relax → Relax).

Each rewrite keeps the model's results (to float32 rounding, see each) and removes work that the
import from ``torch.export`` leaves in a ViT:

* :func:`fold_elementwise_reshapes` — a linear layer imports as ``reshape → matmul → reshape``
  (2-D matmul), so an activation between two linears sits between two reshapes and cannot fuse
  into the first one's epilogue. ``reshape(f(reshape(x)))`` with ``f`` element-wise and the outer
  shape equal to ``x``'s becomes ``f(x)``. Exact.
* :func:`fold_residual_reshapes` — for the same reason a residual add, ``x + reshape(linear)``,
  is a kernel of its own after the linear's 2-D matmul. ``add(reshape(y), r)`` with ``y`` of lower
  rank becomes ``reshape(add(y, reshape(r)))``, so the add joins the matmul's epilogue (a reshape
  of a contiguous tensor is a view, not a copy). Exact.
* :func:`fold_reshape_chains` — a low-rank layer is two linears, so between its factors the
  import leaves ``reshape(reshape(y))`` (back to 3-D, then to 2-D again); fused, the pair is a
  copy kernel that no longer reads as a reshape (a view). ``reshape(reshape(x, a), b)`` becomes
  ``reshape(x, b)``, and a reshape to ``x``'s own shape becomes ``x``. Exact.
* :func:`patchify_convs` — the patch embedding is a convolution whose stride equals its kernel
  (non-overlapping patches): as a convolution it ran at a third of a matmul's speed (1.07 ms of
  deit_tiny's 17). It becomes the matmul it is: patches gathered into rows (a reshape and a
  permute of the image), times the weight reshaped to ``(out, in · kh · kw)``. Exact up to float32
  rounding (the sum is taken in another order).
* :func:`slice_before_permute` — attention splits ``qkv`` into q, k and v by permuting the whole
  ``(tokens, 3, heads, dim)`` tensor and slicing the result three times; the permuted tensor has
  three consumers, so it is a copy of its own before the three slices copy again.
  ``strided_slice(permute_dims(x))`` becomes ``permute_dims(strided_slice(x))`` (the slice's
  axes mapped through the permutation), so each of q, k and v is one kernel reading ``qkv``.
  Exact.
* :func:`drop_softmax_guards` — PyTorch's math attention returns 0 instead of NaN for a row of
  scores that is all ``-inf`` (a fully masked row), with five element-wise ops around every
  softmax. A ViT has no attention mask, so its scores are finite and the guard never fires: the
  rewrite keeps the plain softmax. Exact on finite scores.
* :func:`fast_gelu` — ``gelu`` as ``x · (½ + ½ erf(x/√2))`` with TVM's vectorisable rational
  ``erf`` (``topi.fast_erf``, within a few float32 ulp) instead of a scalar libm call per element.
* ``FastMathTransform`` — softmax with ``topi.fast_exp`` (relative error ~1e-7).
* ``FuseTransposeMatmul`` — ``matmul(x, permute_dims(W))`` as one "NT" matmul, so a linear layer
  does not transpose its weight on every call.
"""

from __future__ import annotations

import math

_ELEMENTWISE = ("relax.nn.gelu", "relax.nn.relu", "relax.nn.silu", "relax.sigmoid", "relax.tanh", "relax.erf")


def static_shape(expr):
    """A Relax expression's shape as ints; None when it is unknown or symbolic."""
    shape = getattr(getattr(expr, "ty", None), "shape", None)
    try:
        return tuple(int(s) for s in shape) if shape is not None else None
    except TypeError:  # symbolic
        return None


def fold_elementwise_reshapes(func, ops: tuple[str, ...] = _ELEMENTWISE):
    from tvm import relax
    from tvm.relax.dpl import is_op, rewrite_call, wildcard

    x = wildcard()
    inner = is_op("relax.reshape")(x, wildcard())
    act = None
    for name in ops:
        p = is_op(name)(inner)
        act = p if act is None else act | p
    outer = is_op("relax.reshape")(act, wildcard())

    def rewrite(call, m):
        if static_shape(m[x]) is None or static_shape(m[x]) != static_shape(call):
            return call
        op = m[act].op
        return relax.Call(op, [m[x]], m[act].attrs)

    return rewrite_call(outer, rewrite, func)


def fold_residual_reshapes(func, into_higher_rank: bool = False):
    """``add(reshape(y), r)`` → ``reshape(add(y, reshape(r)), shape)`` for a ``y`` of lower rank
    (the 2-D result of a matmul), so the add joins the kernel that makes ``y``. With
    ``into_higher_rank``, for a ``y`` of higher rank instead: a VNNI kernel keeps its input's
    3-D shape while the residual stream of fp32 layers is 2-D (one direction per pass, or the two
    rewrites would undo each other)."""
    from tvm import relax
    from tvm.relax.dpl import is_op, rewrite_call, wildcard

    y, r = wildcard(), wildcard()
    up = is_op("relax.reshape")(y, wildcard())
    pattern = is_op("relax.add")(up, r) | is_op("relax.add")(r, up)

    def rewrite(call, m):
        small, out, other = static_shape(m[y]), static_shape(call), static_shape(m[r])
        if small is None or out is None or other != out or math.prod(small) != math.prod(out):
            return call  # a broadcast (a bias)
        if (len(small) <= len(out)) if into_higher_rank else (len(small) >= len(out)):
            return call  # a reshape that keeps the rank, or goes the other way
        return relax.op.reshape(relax.op.add(m[y], relax.op.reshape(m[r], small)), out)

    return rewrite_call(pattern, rewrite, func)


def fold_reshape_chains(func):
    from tvm import relax
    from tvm.relax.dpl import is_op, rewrite_call, wildcard

    x = wildcard()
    inner = is_op("relax.reshape")(x, wildcard())
    outer = is_op("relax.reshape")(inner, wildcard())

    def rewrite(call, m):
        shape = static_shape(call)
        if shape is None:
            return call
        return m[x] if static_shape(m[x]) == shape else relax.op.reshape(m[x], shape)

    return rewrite_call(outer, rewrite, func)


def patchify_convs(func):
    from tvm import relax
    from tvm.relax.dpl import is_op, rewrite_call, wildcard

    pattern = is_op("relax.nn.conv2d")(wildcard(), wildcard())

    def rewrite(call, m):
        a = call.attrs
        x, w = call.args
        sx, sw, out = static_shape(x), static_shape(w), static_shape(call)
        if sx is None or sw is None or out is None or (a.data_layout, a.kernel_layout, a.out_layout) != ("NCHW", "OIHW", "NCHW"):
            return call
        (n, c, h, wd), (o, ci, kh, kw) = sx, sw
        strides, padding, dilation = (tuple(int(v) for v in getattr(a, k)) for k in ("strides", "padding", "dilation"))
        if strides != (kh, kw) or any(padding) or dilation != (1, 1) or int(a.groups) != 1 or ci != c or h % kh or wd % kw:
            return call
        hp, wp = h // kh, wd // kw
        rows = relax.op.reshape(relax.op.permute_dims(relax.op.reshape(x, (n, c, hp, kh, wp, kw)), [0, 2, 4, 1, 3, 5]), (n * hp * wp, c * kh * kw))
        weight = relax.op.permute_dims(relax.op.reshape(w, (o, c * kh * kw)), [1, 0])
        out_dtype = str(a.out_dtype) if str(a.out_dtype) not in ("", "void") else None
        y = relax.op.matmul(rows, weight, out_dtype=out_dtype)
        return relax.op.permute_dims(relax.op.reshape(y, (n, hp, wp, o)), [0, 3, 1, 2])

    return rewrite_call(pattern, rewrite, func)


def slice_before_permute(func):
    from tvm import relax
    from tvm.relax.dpl import is_op, rewrite_call, wildcard

    perm = is_op("relax.permute_dims")(wildcard())
    pattern = is_op("relax.strided_slice")(perm, wildcard(), wildcard(), wildcard(), wildcard())

    def rewrite(call, m):
        p = m[perm]
        if p.attrs.axes is None or not isinstance(call.args[1], relax.Tuple):
            return call
        axes = [int(a) for a in p.attrs.axes]
        try:
            moved = [axes[int(a.value) % len(axes)] for a in call.args[1].fields]
        except (AttributeError, TypeError, ValueError):  # symbolic axes
            return call
        x = p.args[0]
        sliced = relax.op.strided_slice(x, moved, call.args[2], call.args[3], call.args[4], call.attrs.assume_inbound)
        return relax.op.permute_dims(sliced, axes)

    return rewrite_call(pattern, rewrite, func)


def drop_softmax_guards(func):
    from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

    scores = wildcard()
    soft = is_op("relax.nn.softmax")(scores)
    finite = is_op("relax.logical_not")(is_op("relax.equal")(scores, is_const()))
    any_finite = is_op("relax.astype")(is_op("relax.max")(is_op("relax.astype")(finite)))
    masked = is_op("relax.logical_not")(any_finite)
    zeros = is_op("relax.full_like")(soft, wildcard())
    guarded = is_op("relax.where")(masked, zeros, soft)

    def rewrite(call, m):
        return m[soft]

    return rewrite_call(guarded, rewrite, func)


def fast_gelu(func):
    from tvm import relax
    from tvm.relax.dpl import is_op, rewrite_call, wildcard

    x = wildcard()
    pattern = is_op("relax.nn.gelu")(x)

    def rewrite(call, m):
        v = m[x]
        dtype = str(v.ty.dtype)

        def c(value):
            return relax.const(value, dtype)

        erf = relax.op.erf(relax.op.multiply(v, c(1.0 / math.sqrt(2.0))))
        return relax.op.multiply(v, relax.op.add(c(0.5), relax.op.multiply(c(0.5), erf)))

    return rewrite_call(pattern, rewrite, func)


def _fold_around_vnni(mod):
    """After :func:`~vitune.targets.int8.vnni_matmuls`: the casts and residual adds around a VNNI
    kernel's 3-D result fold into its epilogue. Modules without one are returned as they are (the
    fp32 kernels keep the workloads the shipped schedules were tuned for)."""
    from tvm import relax

    from vitune.targets.int8 import KERNEL

    if not any(gv.name_hint.startswith(KERNEL) for gv in mod.functions):
        return mod
    for gv, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            func = fold_elementwise_reshapes(func, (*_ELEMENTWISE, "relax.astype"))
            mod[gv] = fold_reshape_chains(fold_residual_reshapes(func, into_higher_rank=True))
    return mod


def optimize(mod, target=None, vnni: bool = False):
    """Apply every rewrite above to ``mod``'s Relax functions; returns a new module. With a CPU
    ``target``, attention is also fused into one kernel (:mod:`vitune.targets.attention`); with
    ``vnni`` too, int8 matmuls run on VNNI where the CPU has it (:mod:`vitune.targets.int8`). That
    kernel is written to be tuned: a build that is not (tuning off) keeps TVM's default int8 matmul,
    which untuned runs 13x faster than an untuned VNNI kernel (0.25 against 3.3 ms, 65 tokens,
    192 -> 576 -> 192)."""
    from tvm import relax

    from vitune.targets.attention import fuse_attention
    from vitune.targets.int8 import vnni_matmuls

    for gv, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            func = fold_elementwise_reshapes(func)
            func = fold_residual_reshapes(func)
            func = fold_reshape_chains(func)
            func = patchify_convs(func)
            func = slice_before_permute(func)
            func = drop_softmax_guards(func)
            func = fast_gelu(func)
            mod[gv] = func
    if target is not None:  # before the NT fold, which would take attention's q·kᵀ apart
        mod = fuse_attention(mod, target)
        if vnni:
            mod = _fold_around_vnni(vnni_matmuls(mod, target))
    mod = relax.transform.FuseTransposeMatmul()(mod)
    return relax.transform.FastMathTransform()(mod)

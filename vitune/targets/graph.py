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


def _shape(expr):
    shape = getattr(getattr(expr, "ty", None), "shape", None)
    try:
        return tuple(int(s) for s in shape) if shape is not None else None
    except TypeError:  # symbolic
        return None


def fold_elementwise_reshapes(func):
    from tvm import relax
    from tvm.relax.dpl import is_op, rewrite_call, wildcard

    x = wildcard()
    inner = is_op("relax.reshape")(x, wildcard())
    act = None
    for name in _ELEMENTWISE:
        p = is_op(name)(inner)
        act = p if act is None else act | p
    outer = is_op("relax.reshape")(act, wildcard())

    def rewrite(call, m):
        if _shape(m[x]) is None or _shape(m[x]) != _shape(call):
            return call
        op = m[act].op
        return relax.Call(op, [m[x]], m[act].attrs)

    return rewrite_call(outer, rewrite, func)


def fold_residual_reshapes(func):
    from tvm import relax
    from tvm.relax.dpl import is_op, rewrite_call, wildcard

    y, r = wildcard(), wildcard()
    up = is_op("relax.reshape")(y, wildcard())
    pattern = is_op("relax.add")(up, r) | is_op("relax.add")(r, up)

    def rewrite(call, m):
        small, out, other = _shape(m[y]), _shape(call), _shape(m[r])
        if small is None or out is None or other != out or len(small) >= len(out) or math.prod(small) != math.prod(out):
            return call  # a broadcast (a bias), or a reshape that does not add leading axes
        return relax.op.reshape(relax.op.add(m[y], relax.op.reshape(m[r], small)), out)

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


def optimize(mod):
    """Apply every rewrite above to ``mod``'s Relax functions; returns a new module."""
    from tvm import relax

    mod = relax.transform.FuseTransposeMatmul()(mod)
    for gv, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            func = fold_elementwise_reshapes(func)
            func = fold_residual_reshapes(func)
            func = drop_softmax_guards(func)
            func = fast_gelu(func)
            mod[gv] = func
    return relax.transform.FastMathTransform()(mod)

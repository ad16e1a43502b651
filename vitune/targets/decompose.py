"""PyTorch's core-ATen decomposition of an exported program, node by node, with the
decompositions cached in the process.

TVM imports an ``ExportedProgram`` after :meth:`ExportedProgram.run_decompositions`, which
traces the whole program a second time (FakeTensor propagation, functionalization and
decomposition of every node: ~3 ms a node, 2.5-5 s of a compressed deit_tiny candidate's build,
whose program holds ~1000 nodes). Most of those nodes are core ATen already and come out as they
went in; the rest (``linear``, ``scaled_dot_product_attention``, ``t``, ``unbind``, casts…) repeat
block after block and trial after trial with the same shapes.

:func:`decompose` rewrites only the nodes that decompose, each by the decomposition of its
operator on inputs of its shapes, strides and dtypes (and its constant arguments): decompositions
not seen before are traced together in one ``make_fx`` call, with the same tables
``run_decompositions()`` uses (its CompositeImplicitAutograd overrides, then the Python table),
and kept; the nodes then come in where the original node was, in the trace's order. The result
is the program ``run_decompositions()`` gives, up to node names: the Relax module imported from
it is structurally equal (tests/targets/test_compile.py checks it on every ViT variant and
compression family). What it can't reproduce exactly (an argument that is not a plain constant,
a decomposition that mutates or holds constants of its own, a higher-order operator) raises
:class:`Undecomposable` before the program is touched, and the import decomposes as before
(the calls of a trace that failed are not traced again in the process).
"""

from __future__ import annotations

import operator
from collections import OrderedDict
from typing import Any

import torch
from torch.utils import _pytree as pytree

CAPACITY = 8192  # decompositions kept (least recently used dropped)
_CACHE: OrderedDict[tuple, tuple[list, list, Any]] = OrderedDict()
_TABLES: tuple[dict, dict] | None = None
_FAILED: set[tuple] = set()  # keys of calls whose trace failed: not traced again in this process
_CONSTANTS = (int, float, bool, str, type(None), torch.dtype, torch.device, torch.layout, torch.memory_format)


class Undecomposable(Exception):
    """A node this module does not decompose exactly as ``run_decompositions()`` would."""


def _tables() -> tuple[dict, dict]:
    """(CompositeImplicitAutograd overrides, Python decompositions) of the default table."""
    global _TABLES
    if _TABLES is None:
        from torch.export.exported_program import _split_decomp_table_to_cia_and_python_decomp

        table = torch.export.default_decompositions()
        table = table.materialize() if hasattr(table, "materialize") else dict(table)
        _TABLES = _split_decomp_table_to_cia_and_python_decomp(table)
    return _TABLES


def _kept(op) -> bool:
    """Whether ``op`` comes out of the decomposition as it went in."""
    cia, python = _tables()
    return torch.Tag.core in op.tags and op not in python and op not in cia


class _Call:
    """One node's call: its operator, arguments flattened (tensors by position) and the key of
    its decomposition."""

    __slots__ = ("op", "flat", "spec", "positions", "examples", "key")

    def __init__(self, node):
        flat, spec = pytree.tree_flatten((node.args, node.kwargs))
        positions, leaves, examples = [], [], []
        for i, arg in enumerate(flat):
            if isinstance(arg, torch.fx.Node):
                val = arg.meta.get("val")
                if not isinstance(val, torch.Tensor):
                    raise Undecomposable(f"{node.target}: an input with no tensor value")
                meta = (tuple(val.shape), tuple(val.stride()), val.dtype)
                if not all(isinstance(s, int) for s in meta[0] + meta[1]):
                    raise Undecomposable(f"{node.target}: a symbolic shape")
                positions.append(i)
                examples.append(meta)
                leaves.append(("tensor", *meta))
            elif isinstance(arg, _CONSTANTS):
                leaves.append((type(arg).__name__, repr(arg)))
            else:
                raise Undecomposable(f"{node.target}: an argument of type {type(arg).__name__}")
        self.op, self.flat, self.spec, self.positions, self.examples = node.target, flat, spec, positions, examples
        self.key = (node.target, spec, tuple(leaves))


def _trace(calls: list[_Call]) -> None:
    """Decompose ``calls`` in one trace and cache each one's (nodes, placeholders, result)."""
    from torch.export.exported_program import _override_composite_implicit_decomp
    from torch.fx.experimental.proxy_tensor import make_fx

    cia, python = _tables()
    spans, examples = [], []
    for call in calls:
        spans.append((len(examples), len(call.examples)))
        examples += [torch.empty_strided(shape, stride, dtype=dtype) for shape, stride, dtype in call.examples]

    def run(*tensors):
        outs = []
        for (start, n), call in zip(spans, calls):
            leaves = list(call.flat)
            for i, t in zip(call.positions, tensors[start:start + n]):
                leaves[i] = t
            args, kwargs = pytree.tree_unflatten(leaves, call.spec)
            outs.append(call.op(*args, **kwargs))
        return outs

    try:
        with _override_composite_implicit_decomp(cia):
            graph = make_fx(run, decomposition_table=python, tracing_mode="fake", pre_dispatch=False)(*examples).graph
    except Exception as err:  # whatever the trace can't do, run_decompositions() does
        _FAILED.update(call.key for call in calls)
        raise Undecomposable(f"tracing the decompositions failed: {type(err).__name__}: {err}") from err
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    results = graph.output_node().args[0]
    owner: dict = {}
    for j, result in enumerate(results):
        stack = [n for n in pytree.tree_leaves(result) if isinstance(n, torch.fx.Node)]
        while stack:
            n = stack.pop()
            if n.op == "placeholder":
                continue
            if n in owner:
                if owner[n] != j:
                    raise Undecomposable("two decompositions share a node")
                continue
            if n.op != "call_function" or not (n.target is operator.getitem or isinstance(n.target, torch._ops.OpOverload)):
                raise Undecomposable(f"a decomposition holds {n.op} {n.target}")
            owner[n] = j
            stack += n.all_input_nodes
    for n in graph.nodes:
        if isinstance(n.target, torch._ops.OpOverload) and n.target._schema.is_mutable:
            raise Undecomposable(f"a decomposition mutates a tensor ({n.target})")
    for j, ((start, count), call) in enumerate(zip(spans, calls)):
        _CACHE[call.key] = ([n for n in graph.nodes if owner.get(n) == j], placeholders[start:start + count], results[j])


def decompose(program) -> int:
    """Decompose ``program`` (an ``ExportedProgram``) to core ATen in place, as
    ``program.run_decompositions()`` would; returns how many nodes were replaced. Raises
    :class:`Undecomposable`, ``program`` untouched, where that can't be done exactly."""
    graph = program.graph
    work = []
    for node in graph.nodes:
        if node.op != "call_function" or node.target is operator.getitem:
            continue
        if not isinstance(node.target, torch._ops.OpOverload):
            raise Undecomposable(f"{node.target} is not an ATen operator")
        if not _kept(node.target):
            work.append((node, _Call(node)))
    missing: dict[tuple, _Call] = {}
    for _, call in work:
        if call.key in _CACHE:
            _CACHE.move_to_end(call.key)  # this program's: the last to be dropped
        elif call.key in _FAILED:
            raise Undecomposable(f"{call.op}: its decomposition could not be traced before")
        else:
            missing.setdefault(call.key, call)
    if missing:
        _trace(list(missing.values()))
    keep = {call.key for _, call in work}
    while len(_CACHE) > CAPACITY:  # least recently used first, never one this program needs
        key = next(iter(_CACHE))
        if key in keep:
            break
        del _CACHE[key]
    plan = []
    for node, call in work:
        nodes, placeholders, result = _CACHE[call.key]
        ops = [n for n in nodes if n.op == "call_function"]
        if len(ops) == 1 and ops[0].target == node.target:
            continue  # it does not decompose
        if isinstance(result, (tuple, list)) and any(user.target is not operator.getitem for user in node.users):
            raise Undecomposable(f"the results of {node.target} are used other than one by one")
        plan.append((node, call, nodes, placeholders, result))
    # from here on nothing raises: the program is rewritten
    for node, call, nodes, placeholders, result in plan:
        # the node's inputs now, not call.flat: a replaced node upstream rewired them
        flat, _ = pytree.tree_flatten((node.args, node.kwargs))
        env = {p: flat[i] for p, i in zip(placeholders, call.positions)}
        with graph.inserting_before(node):
            for n in nodes:
                env[n] = graph.node_copy(n, lambda x: env[x])
        out = pytree.tree_map(lambda x: env[x] if isinstance(x, torch.fx.Node) else x, result)
        if isinstance(out, (tuple, list)):
            for user in list(node.users):
                user.replace_all_uses_with(out[user.args[1]])
                graph.erase_node(user)
        else:
            node.replace_all_uses_with(out)
        graph.erase_node(node)
    graph.eliminate_dead_code()
    program.graph_module.recompile()
    return len(plan)

"""Export to Relax (vitune.targets.compile): what the import keeps and what it may drop."""

import pytest
import torch
from torch import nn

from vitune.compression.modules import Int8Linear, W8A8Linear
from vitune.targets.compile import drop_metadata_asserts, export_relax


def quantized_mlp() -> nn.Module:
    torch.manual_seed(0)
    first, second = nn.Linear(16, 24), nn.Linear(24, 8)
    return nn.Sequential(W8A8Linear.from_linear(first, 0.03), nn.GELU(), Int8Linear.from_linear(second)).eval()


def _asserts(program) -> int:
    return sum(1 for n in program.graph.nodes if n.op == "call_function" and n.target is torch.ops.aten._assert_tensor_metadata.default)


@pytest.mark.parametrize("model", [quantized_mlp, lambda: nn.Sequential(nn.Linear(16, 8), nn.GELU()).eval()], ids=["quantized", "fp32"])
def test_metadata_asserts_are_dropped_and_the_relax_module_is_the_same(model):
    import tvm_ffi
    from tvm import relax
    from tvm.relax.frontend.torch import from_exported_program

    m, x = model(), torch.randn(1, 5, 16)
    with torch.no_grad():
        kept, dropped = torch.export.export(m, (x,)), torch.export.export(m, (x,))
    n = _asserts(dropped)
    assert drop_metadata_asserts(dropped) == n and _asserts(dropped) == 0
    if model is quantized_mlp:
        assert n > 0  # the int8 casts' checks
    assert drop_metadata_asserts(dropped) == 0  # nothing left to drop
    torch.testing.assert_close(dropped.module()(x), m(x))
    with_, without = (relax.frontend.detach_params(from_exported_program(p, keep_params_as_input=True))[0] for p in (kept, dropped))
    assert tvm_ffi.structural_equal(with_, without)


def test_quantized_layers_do_not_cast_what_already_has_the_dtype():
    """A ``.to`` that changes nothing still exports as a copy and a check: the int8 layers cast
    only the integer tensors (and the scales where the input is not float32)."""
    m, x = quantized_mlp(), torch.randn(1, 5, 16)
    with torch.no_grad():
        program = torch.export.export(m, (x,))
    casts = [n for n in program.graph.nodes if n.op == "call_function" and "to" in str(n.target).split(".")[1:2]]
    dtypes = sorted(str(n.args[1]).replace("torch.", "") for n in casts if len(n.args) > 1)
    # W8A8: x -> int8 -> int32, weight -> int32, accumulator -> float32; Int8Linear: weight -> float32
    assert dtypes == ["float32", "float32", "int32", "int32", "int8"], dtypes
    mod, params = export_relax(m, x)
    assert len(params) > 0 and "main" in [gv.name_hint for gv in mod.functions]

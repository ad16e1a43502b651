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


def _variants():
    from tests.models.test_variants import VARIANTS

    def plain():
        from timm.models.vision_transformer import VisionTransformer

        return VisionTransformer(img_size=16, patch_size=4, in_chans=3, num_classes=5, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2.0)

    return {"vit": plain, **VARIANTS}


def _compressed(make, which: str) -> nn.Module:
    from vitune.compression.calibrate import Calibration
    from vitune.compression.config import CompressionConfig, LinearConfig
    from vitune.compression.pipeline import compress

    torch.manual_seed(0)
    model = make().eval()
    if which == "uncompressed":
        return model
    config = CompressionConfig.make(
        linear={"blocks.1.attn.qkv": LinearConfig("int8", 8), "blocks.1.mlp.fc1": LinearConfig("w8a8", None),
                "blocks.0.mlp.fc2": LinearConfig("fp32", 8), "blocks.0.attn.proj": LinearConfig("int4", None),
                "blocks.0.attn.qkv": LinearConfig("fp16", None), "blocks.1.mlp.fc2": LinearConfig("w8a8", 8)},
        prune_heads={"blocks.1.attn": 0.5}, prune_mlp={"blocks.0.mlp": 0.5},
    )
    gen = torch.Generator().manual_seed(1)
    return compress(model, config, calibration=Calibration(torch.randn(32, 3, 16, 16, generator=gen), torch.zeros(32, dtype=torch.long)))


@pytest.mark.parametrize("which", ["uncompressed", "every-family"])
@pytest.mark.parametrize("variant", list(_variants()))
def test_decomposing_node_by_node_gives_the_module_run_decompositions_gives(variant, which):
    """The import of a program decomposed by vitune.targets.decompose (cached decompositions,
    no second trace) is structurally equal to TVM's import after PyTorch's own decomposition,
    for every ViT variant, uncompressed and with every compression family."""
    import tvm_ffi
    from tvm import relax
    from tvm.relax.frontend.torch import from_exported_program

    import vitune.targets.decompose as dec

    model, x = _compressed(_variants()[variant], which), torch.randn(1, 3, 16, 16)

    def imported(decompose: bool):
        with torch.no_grad():
            program = torch.export.export(model, (x,))
        if decompose:
            assert dec.decompose(program) > 0
        return relax.frontend.detach_params(from_exported_program(program, keep_params_as_input=True, run_ep_decomposition=not decompose))

    (theirs, their_params), (ours, our_params) = imported(False), imported(True)
    assert tvm_ffi.structural_equal(theirs, ours)
    assert [p.numpy().tobytes() for p in their_params["main"]] == [p.numpy().tobytes() for p in our_params["main"]]


def test_decompositions_are_traced_once_and_what_cannot_be_done_exactly_is_left_to_the_import(monkeypatch):
    import vitune.targets.decompose as dec

    monkeypatch.setattr(dec, "_CACHE", type(dec._CACHE)())
    traced = []
    trace = dec._trace
    monkeypatch.setattr(dec, "_trace", lambda calls: (traced.append(len(calls)), trace(calls)))
    model, x = quantized_mlp(), torch.randn(1, 5, 16)
    for _ in range(2):
        with torch.no_grad():
            program = torch.export.export(model, (x,))
        assert dec.decompose(program) > 0
        torch.testing.assert_close(program.module()(x), model(x))
    assert len(traced) == 1 and traced[0] == len(dec._CACHE) > 0  # the second program's nodes all came from the cache

    # a trace that fails leaves the program as it was, and export_relax imports it the usual way
    def failing(calls):
        raise dec.Undecomposable("no")

    monkeypatch.setattr(dec, "_CACHE", type(dec._CACHE)())
    monkeypatch.setattr(dec, "_trace", failing)
    with torch.no_grad():
        program = torch.export.export(model, (x,))
    before = [str(n.target) for n in program.graph.nodes]
    with pytest.raises(dec.Undecomposable):
        dec.decompose(program)
    assert [str(n.target) for n in program.graph.nodes] == before
    mod, params = export_relax(model, x)
    monkeypatch.undo()
    again, params_again = export_relax(model, x)
    import tvm_ffi

    assert tvm_ffi.structural_equal(mod, again)


def test_the_cache_of_decompositions_never_drops_what_the_program_at_hand_needs(monkeypatch):
    """Past its capacity the cache drops the least recently used decompositions, but never one
    of the program being decomposed (it is looked up after the new ones are traced)."""
    import vitune.targets.decompose as dec

    def keys(program) -> set:
        return {dec._Call(n).key for n in program.graph.nodes
                if n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload) and not dec._kept(n.target)}

    monkeypatch.setattr(dec, "_CACHE", type(dec._CACHE)())
    x = torch.randn(1, 5, 16)
    first, alone = quantized_mlp(), nn.Sequential(nn.Linear(16, 8), nn.GELU()).eval()
    with torch.no_grad():
        dec.decompose(torch.export.export(alone, (x,)))  # the oldest entries
        dec.decompose(torch.export.export(first, (x,)))
    monkeypatch.setattr(dec, "CAPACITY", 1)
    more = nn.Sequential(first, nn.Linear(8, 8)).eval()  # first's decompositions, and a new one
    with torch.no_grad():
        program = torch.export.export(more, (x,))
    needed = keys(program)
    assert needed & set(dec._CACHE) and needed - set(dec._CACHE)
    assert dec.decompose(program) > 0
    torch.testing.assert_close(program.module()(x), more(x))
    assert set(dec._CACHE) == needed  # everything else dropped, nothing it needed


def test_a_decomposition_that_cannot_be_traced_is_not_tried_again(monkeypatch):
    """A failed trace leaves the program to the import's own decomposition, and the calls it
    held are not traced again in this process (each later trial would pay for it)."""
    import torch.fx.experimental.proxy_tensor as proxy_tensor

    import vitune.targets.decompose as dec

    monkeypatch.setattr(dec, "_CACHE", type(dec._CACHE)())
    monkeypatch.setattr(dec, "_FAILED", set())
    tries = []

    def failing(*args, **kwargs):
        tries.append(1)
        raise RuntimeError("no")

    monkeypatch.setattr(proxy_tensor, "make_fx", failing)
    model, x = quantized_mlp(), torch.randn(1, 5, 16)
    for _ in range(2):
        with torch.no_grad():
            program = torch.export.export(model, (x,))
        with pytest.raises(dec.Undecomposable):
            dec.decompose(program)
    assert len(tries) == 1 and dec._FAILED

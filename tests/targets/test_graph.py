import numpy as np
import pytest
import torch

from vitune.targets.compile import compile_model, export_relax
from vitune.targets.graph import optimize
from vitune.targets.runner import runner_for, use_threads


def _ops(mod) -> list[str]:
    from tvm import relax

    names = []

    def visit(expr):
        if isinstance(expr, relax.Call) and hasattr(expr.op, "name"):
            names.append(expr.op.name)

    relax.analysis.post_order_visit(mod["main"].body, visit)
    return names


def test_vit_blocks_lose_their_guards_and_keep_fusable_activations(tiny_vit):
    mod, _ = export_relax(tiny_vit, torch.randn(1, 1, 8, 8))
    before = _ops(mod)
    assert "relax.where" in before and "relax.nn.gelu" in before  # what torch.export leaves
    after = _ops(optimize(mod))
    assert "relax.where" not in after and "relax.nn.softmax" not in after and "relax.nn.gelu" not in after


def _kernels(mod) -> list[str]:
    import tvm
    from tvm import relax

    with tvm.target.Target({"kind": "llvm"}):
        fused = relax.get_pipeline("zero")(mod)
    return [gv.name_hint for gv, f in fused.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]


def test_activations_and_residual_adds_fuse_into_their_linear_layers(tiny_vit):
    mod, _ = export_relax(tiny_vit, torch.randn(1, 1, 8, 8))
    before, after = _kernels(mod), _kernels(optimize(mod))
    assert any("gelu" in k and "matmul" not in k for k in before)  # GELU alone between two reshapes
    assert any("reshape" in k and k.endswith("_add1") and "matmul" not in k for k in before)  # residual add alone
    # GELU joins fc1's epilogue; each residual add joins proj's and fc2's (bias add, then residual)
    assert any("matmul" in k and "erf" in k for k in after)
    assert sum(1 for k in after if "matmul" in k and "erf" not in k and k.count("_add") == 2) == 2
    assert not any(("gelu" in k or "erf" in k or "add" in k) and "matmul" not in k and "conv2d" not in k and "concatenate" not in k for k in after)


def test_rewritten_build_computes_what_torch_computes(tiny_vit, fast_target):
    x = torch.randn(1, 1, 8, 8) * 4
    compiled = compile_model(tiny_vit, x, fast_target)  # data movement scheduled too (schedule.py)
    got = runner_for(fast_target).run(compiled, x.numpy())
    np.testing.assert_allclose(got, tiny_vit(x).detach().numpy(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("act", [torch.nn.GELU(), torch.nn.Softmax(dim=-1)], ids=["gelu", "softmax"])
def test_fast_math_is_within_float32_rounding(act, fast_target):
    x = torch.linspace(-12, 12, 4096).reshape(8, 512)
    compiled = compile_model(act, x, fast_target)
    got = runner_for(fast_target).run(compiled, x.numpy())
    np.testing.assert_allclose(got, act(x).numpy(), atol=2e-6, rtol=1e-5)


class GuardLike(torch.nn.Module):
    """A where() around a softmax that is not attention's all--inf guard: it must stay."""

    def forward(self, x):
        return torch.where(x > 0, torch.zeros_like(x), torch.softmax(x, dim=-1))


def test_other_wheres_are_kept(fast_target):
    x = torch.randn(4, 16)
    mod, _ = export_relax(GuardLike(), x)
    assert "relax.where" in _ops(optimize(mod))
    got = runner_for(fast_target).run(compile_model(GuardLike(), x, fast_target), x.numpy())
    np.testing.assert_allclose(got, GuardLike()(x).numpy(), atol=1e-6)


def test_kernels_run_on_the_targets_threads():
    assert use_threads(1) == 1
    import os

    if (os.cpu_count() or 1) >= 2:
        assert use_threads(2) == 2  # `import vitune` let the pool have every CPU


def test_a_target_asking_for_more_threads_than_the_pool_has_is_warned(caplog):
    import os

    many = (os.cpu_count() or 1) + 8
    with caplog.at_level("WARNING", logger="vitune.targets.runner"):
        got = use_threads(many)
    assert got < many
    assert f"not the {many} the target asks for" in caplog.text and "TVM_NUM_THREADS" in caplog.text
    use_threads(min(2, os.cpu_count() or 1))


def test_reshapes_are_views_not_kernels(tiny_vit, tiny_calib, fast_target):
    """A reshape around a 2-D matmul, and the reshape pair between a low-rank layer's two factors,
    cost no kernel of their own: the built module calls no PrimFunc that only reshapes."""
    import re

    from tvm import tirx

    from vitune.compression.config import CompressionConfig, LinearConfig
    from vitune.compression.pipeline import compress
    from vitune.targets.schedule import schedule_data_movement

    lowrank = CompressionConfig.make(linear={f"blocks.{i}.mlp.{fc}": LinearConfig("fp32", 4) for i in range(2) for fc in ("fc1", "fc2")})
    x = torch.randn(1, 1, 8, 8)
    for model in (tiny_vit, compress(tiny_vit, lowrank, calibration=tiny_calib).eval()):
        mod, _ = export_relax(model, x)
        built = schedule_data_movement(optimize(mod, fast_target.tvm()), fast_target.tvm())
        kernels = [gv.name_hint for gv, f in built.functions.items() if isinstance(f, tirx.PrimFunc)]
        assert kernels and not [k for k in kernels if re.fullmatch(r"(fused_)?reshape\d*(_reshape\d*)*", k)], kernels
        got = runner_for(fast_target).run(compile_model(model, x, fast_target), x.numpy())
        np.testing.assert_allclose(got, model(x).detach().numpy(), atol=1e-5, rtol=1e-5)

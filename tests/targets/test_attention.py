"""The fused CPU attention kernel and the graph rewrites that feed it (patches, head split)."""

import numpy as np
import pytest
import torch

from vitune.targets.attention import Tiling, attention_kernel
from vitune.targets.compile import compile_model, export_relax
from vitune.targets.graph import optimize
from vitune.targets.runner import runner_for


def _reference(q, k, v):
    """Exact (float64) attention: a float32 reference's own rounding depends on the BLAS kernel."""
    q, k, v = (a.astype(np.float64) for a in (q, k, v))
    s = q @ k.transpose(0, 2, 1)
    e = np.exp(s - s.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)) @ v


@pytest.mark.parametrize(
    "shape",
    [(2, 5, 8, 5, 8), (3, 17, 16, 17, 16), (1, 13, 32, 40, 24), (2, 197, 64, 197, 64)],
    ids=["fewer-rows-than-a-tile", "digits", "ragged", "deit"],
)
@pytest.mark.parametrize("lanes,accumulators", [(16, 24), (8, 12), (4, 24)], ids=["avx512", "avx2", "neon"])
def test_kernel_computes_softmax_attention(shape, lanes, accumulators, fast_target):
    import tvm

    g, m, d, n, dv = shape
    plan = Tiling.plan(m, n, dv, lanes, accumulators)
    assert plan.npad % (plan.cols * plan.lanes) == 0 and plan.npad >= n and dv % (plan.vcols * plan.vlanes) == 0
    assert plan.rows * max(plan.cols, plan.vcols) <= max(accumulators, plan.rows)
    kernel = attention_kernel(g, m, d, n, dv, plan)
    assert attention_kernel(g, m, d, n, dv, plan) is kernel  # made once per shape and plan in a process
    lib = tvm.compile(tvm.IRModule({"attention": kernel.with_attr("global_symbol", "attention")}), target=fast_target.tvm())
    rng = np.random.default_rng(0)
    q = rng.standard_normal((g, m, d), dtype=np.float32)
    k = rng.standard_normal((g, n, d), dtype=np.float32) * 2
    v = rng.standard_normal((g, n, dv), dtype=np.float32)
    kt = np.zeros((g, d, plan.npad), np.float32)
    kt[:, :, :n] = k.transpose(0, 2, 1)
    kt[:, :, n:] = 1e4  # padded keys must not count, whatever the pad holds
    out = tvm.runtime.tensor(np.full((g, m, dv), np.nan, np.float32))
    lib["attention"](*(tvm.runtime.tensor(a) for a in (q, kt, v)), out)
    # float32 scores of up to ~50 carry ~5e-6 absolute error into exp(): 1e-4 of O(1) outputs
    np.testing.assert_allclose(out.numpy(), _reference(q, k, v), rtol=1e-4, atol=5e-5)


def _kernels(mod, target):
    import tvm
    from tvm import relax

    with target:
        fused = relax.get_pipeline("zero")(optimize(mod, target))
    return [gv.name_hint for gv, f in fused.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]


def test_vit_attention_is_one_kernel_on_cpu_and_left_alone_elsewhere(tiny_vit, fast_target):
    import tvm

    mod, _ = export_relax(tiny_vit, torch.randn(1, 1, 8, 8))
    cpu = _kernels(mod, fast_target.tvm())
    assert sum(k.startswith("attention") for k in cpu) >= 1
    assert not any("softmax" in k for k in cpu) and not any("matmul" in k and "NT" not in k for k in cpu)
    gpu = optimize(mod, tvm.target.Target({"kind": "cuda", "arch": "sm_80"}))
    assert not any(gv.name_hint.startswith("attention") for gv in gpu.functions)


class ExplicitAttention(torch.nn.Module):
    """Attention written out, the way timm's non-fused path and many ports write it."""

    def __init__(self, dim=48, heads=3):
        super().__init__()
        self.heads, self.qkv, self.proj = heads, torch.nn.Linear(dim, 3 * dim), torch.nn.Linear(dim, dim)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        attn = (q * (c // self.heads) ** -0.5) @ k.transpose(-2, -1)
        return self.proj((attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, t, c))


@pytest.mark.parametrize("model,x", [(ExplicitAttention(), torch.randn(2, 11, 48))], ids=["explicit"])
def test_fused_attention_computes_what_torch_computes(model, x, fast_target):
    mod, _ = export_relax(model.eval(), x)
    assert any(k.startswith("attention") for k in _kernels(mod, fast_target.tvm()))
    got = runner_for(fast_target).run(compile_model(model, x, fast_target), x.numpy())
    np.testing.assert_allclose(got, model(x).detach().numpy(), rtol=1e-5, atol=1e-5)


class NotRowSoftmax(torch.nn.Module):
    """Scores normalised over the queries (dim -2), not over each row: not the kernel's softmax."""

    def forward(self, x):
        return (x @ (2 * x).transpose(-2, -1)).softmax(dim=-2) @ x


class HalfAttention(torch.nn.Module):
    def forward(self, x):
        h = x.half()
        return ((h @ h.transpose(-2, -1)).softmax(dim=-1) @ h).float()


@pytest.mark.parametrize("model", [NotRowSoftmax(), HalfAttention()], ids=["softmax-over-queries", "fp16"])
def test_other_attentions_are_left_as_they_are(model, fast_target):
    x = torch.randn(2, 9, 16)
    mod, _ = export_relax(model, x)
    assert not any(k.startswith("attention") for k in _kernels(mod, fast_target.tvm()))
    if isinstance(model, NotRowSoftmax):
        got = runner_for(fast_target).run(compile_model(model, x, fast_target), x.numpy())
        np.testing.assert_allclose(got, model(x).numpy(), rtol=1e-5, atol=1e-5)


def _sliced_ops(mod) -> list[str]:
    """The op each strided_slice of ``mod``'s main function slices."""
    from tvm import relax

    producers, sliced = {}, []
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            producers[binding.var] = binding.value
            value = binding.value
            if isinstance(value, relax.Call) and getattr(value.op, "name", "") == "relax.strided_slice":
                src = producers.get(value.args[0])
                sliced.append(getattr(getattr(src, "op", None), "name", "input"))
    return sliced


@pytest.mark.parametrize("model,x", [("tiny_vit", torch.randn(1, 1, 8, 8)), (ExplicitAttention(), torch.randn(2, 11, 48))], ids=["timm", "explicit"])
def test_head_split_slices_before_it_permutes(model, x, request):
    model = request.getfixturevalue(model) if isinstance(model, str) else model.eval()
    mod, _ = export_relax(model, x)
    assert "relax.permute_dims" in _sliced_ops(mod)  # q, k, v cut from one permuted copy of qkv
    after = _sliced_ops(optimize(mod))
    assert after and "relax.permute_dims" not in after  # each one permutes only its own slice


class Patches(torch.nn.Module):
    def __init__(self, stride):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 4, stride=stride)

    def forward(self, x):
        return self.conv(x)


@pytest.mark.parametrize("stride,rewritten", [(4, True), (2, False)], ids=["patches", "overlapping"])
def test_patch_convolutions_become_matmuls(stride, rewritten, fast_target):
    model, x = Patches(stride).eval(), torch.randn(2, 3, 12, 16)
    mod, _ = export_relax(model, x)
    kernels = _kernels(mod, fast_target.tvm())
    assert any("conv2d" in k for k in kernels) != rewritten
    assert any("matmul" in k for k in kernels) == rewritten
    got = runner_for(fast_target).run(compile_model(model, x, fast_target), x.numpy())
    np.testing.assert_allclose(got, model(x).detach().numpy(), rtol=1e-5, atol=1e-5)

"""w8a8 matmuls on x86 VNNI: the rewrite, its exactness, and that tuning tensorizes it."""

import numpy as np
import pytest
import torch
from torch import nn

from vitune.compression.modules import W8A8Linear
from vitune.targets.compile import compile_model, export_relax
from vitune.targets.graph import optimize
from vitune.targets.int8 import KERNEL, has_vnni
from vitune.targets.runner import runner_for
from vitune.targets.tuning import Tuner


def w8a8_mlp(k: int, hidden: int, out: int) -> nn.Module:
    torch.manual_seed(0)
    first, second = nn.Linear(k, hidden), nn.Linear(hidden, out)
    return nn.Sequential(W8A8Linear.from_linear(first, 0.03), nn.GELU(), W8A8Linear.from_linear(second, 0.02)).eval()


def kernels(mod) -> list[str]:
    return [gv.name_hint for gv in mod.functions]


@pytest.fixture()
def vnni_target(fast_target):
    if not has_vnni(fast_target.tvm()):
        pytest.skip("this CPU has no AVX-512 VNNI")
    return fast_target


@pytest.mark.parametrize("k, hidden, out", [(16, 32, 8), (24, 40, 24), (18, 32, 8)])
def test_int8_matmuls_become_vnni_kernels_where_the_weight_allows(vnni_target, k, hidden, out):
    """Every int8 matmul whose K is a multiple of 4 runs on the VNNI kernel (N padded to 16);
    a K that is not stays TVM's integer matmul."""
    model = w8a8_mlp(k, hidden, out)
    mod, _ = export_relax(model, torch.randn(1, 5, k))
    names = kernels(optimize(mod, vnni_target.tvm(), vnni=True))
    want = (k % 4 == 0) + (hidden % 4 == 0)
    assert sum(name.startswith(KERNEL) for name in names) == want
    assert not any(name.startswith(KERNEL) for name in kernels(optimize(mod, vnni_target.tvm())))


def test_vnni_is_only_for_x86_cpus_that_have_it():
    import tvm

    assert not has_vnni(tvm.target.Target({"kind": "llvm", "mcpu": "skylake"}))
    assert has_vnni(tvm.target.Target({"kind": "llvm", "mcpu": "cascadelake"}))
    assert not has_vnni(tvm.target.Target({"kind": "cuda", "arch": "sm_80"}))


@pytest.mark.parametrize("k, hidden, out", [(32, 48, 24), (24, 40, 18)])
def test_a_tuned_w8a8_build_runs_vnni_and_equals_torch(vnni_target, tmp_path, monkeypatch, k, hidden, out):
    """Tuned, the kernel is tensorized with vpdpbusd, the weights are packed once, and the
    output equals PyTorch's (the integer products are exact: the only difference is float
    rounding in the epilogue); ragged N (padded) and signed activations at both clip ends too."""
    monkeypatch.setenv("VITUNE_CACHE_DIR", str(tmp_path))
    model = w8a8_mlp(k, hidden, out)
    x = torch.randn(1, 7, k) * 3  # many activations beyond ±127 s_x: clipped at both ends
    want = model(x).detach().numpy()
    tuner = Tuner(vnni_target, "tune", trials_per_task=8)
    compiled = compile_model(model, x, vnni_target, tuner)
    assert compiled.prepacked and compiled.tuning.tuned >= 2
    got = runner_for(vnni_target).run(compiled, x.numpy())
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    traces = [str(record.trace) for record in tuner.database.get_all_tuning_records()]
    assert any("dot_16x4_vnni" in trace for trace in traces), "no tuned schedule uses the VNNI intrinsic"
    asm = "".join(m.inspect_source("asm") for m in compiled.runtime_module().imports if m.kind == "llvm")
    assert "vpdpbusd" in asm


def test_an_untuned_build_keeps_the_default_int8_matmul(vnni_target):
    """The VNNI kernel is written to be tuned; untuned it would be the slower of the two."""
    model = w8a8_mlp(16, 32, 8)
    x = torch.randn(1, 5, 16)
    compiled = compile_model(model, x, vnni_target, Tuner(vnni_target, "off"))
    np.testing.assert_allclose(runner_for(vnni_target).run(compiled, x.numpy()), model(x).detach().numpy(), rtol=1e-5, atol=1e-5)
    assert not compiled.prepacked


class NormLinearResidual(nn.Module):
    """``x + w8a8(layer_norm(x))``: a transformer block's half, as the quickstart's model has it."""

    def __init__(self, width: int):
        super().__init__()
        torch.manual_seed(0)
        self.norm, self.linear = nn.LayerNorm(width), W8A8Linear.from_linear(nn.Linear(width, width), 0.03)

    def forward(self, x):
        return x + self.linear(self.norm(x))


def test_the_layers_quantize_and_epilogue_fuse_around_the_vnni_kernel(vnni_target):
    """The unsigned activation is made in the layer norm's kernel, and the dequantize, bias and
    residual add run in the VNNI kernel's epilogue: two kernels that touch activations."""
    from tvm import relax

    mod, _ = export_relax(NormLinearResidual(32).eval(), torch.randn(1, 9, 32))
    fused = relax.get_pipeline("zero")(optimize(mod, vnni_target.tvm(), vnni=True))
    names = kernels(fused)
    vnni = [n for n in names if KERNEL in n]
    norm = [n for n in names if "layer_norm" in n]
    assert len(vnni) == 1 and "add" in vnni[0] and "multiply" in vnni[0], names
    assert len(norm) == 1 and "cast" in norm[0] and "add" in norm[0], names

import copy

import pytest
import torch
from torch import nn

from vitune.compression.config import CompressionConfig, LinearConfig
from vitune.compression.distill import distill
from vitune.compression.lowrank import factorize
from vitune.compression.modules import Fp16Linear, Int8Linear, LowRankLinear
from vitune.compression.pipeline import compress
from vitune.compression.prune import prune_heads, prune_mlp
from vitune.compression.quantize import quantize_linear
from vitune.compression.stats import model_stats
from vitune.errors import ConfigError
from vitune.models.layers import discover


def test_exactly_low_rank_weight_is_recovered():
    torch.manual_seed(0)
    layer = nn.Linear(24, 40)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(40, 5) @ torch.randn(5, 24))
    lr = factorize(layer, 5)
    assert isinstance(lr, LowRankLinear) and lr.rank == 5
    x = torch.randn(7, 24)
    torch.testing.assert_close(lr(x), layer(x), atol=1e-4, rtol=1e-4)
    assert lr.first.weight.shape == (5, 24) and lr.second.weight.shape == (40, 5)


def test_truncated_svd_is_optimal_in_frobenius_norm():
    torch.manual_seed(1)
    layer = nn.Linear(16, 16, bias=False)
    lr = factorize(layer, 4)
    approx = lr.second.weight @ lr.first.weight
    s = torch.linalg.svdvals(layer.weight.detach())
    err = torch.linalg.norm(layer.weight.detach() - approx)
    torch.testing.assert_close(err, s[4:].pow(2).sum().sqrt(), atol=1e-4, rtol=1e-4)


def test_impossible_rank_is_rejected():
    with pytest.raises(ConfigError, match="rank 9 is impossible for a 8x8 layer"):
        factorize(nn.Linear(8, 8), 9, where="x")


def test_pruned_mlp_equals_sliced_original(tiny_vit):
    mlp = tiny_vit.blocks[0].mlp
    original = copy.deepcopy(mlp)
    keep = prune_mlp(mlp, 0.5)
    assert mlp.fc1.out_features == 32 and mlp.fc2.in_features == 32 and len(keep) == 32
    # the original with the dropped neurons' outgoing weights zeroed computes the same function
    mask = torch.zeros(64)
    mask[keep] = 1.0
    with torch.no_grad():
        original.fc2.weight.mul_(mask)
    x = torch.randn(3, 5, 32)
    torch.testing.assert_close(mlp(x), original(x), atol=1e-5, rtol=1e-5)


def test_pruned_heads_equal_sliced_original(tiny_vit):
    attn = tiny_vit.blocks[1].attn
    original = copy.deepcopy(attn)
    keep = prune_heads(attn, 0.5)
    assert attn.num_heads == 2 and attn.qkv.out_features == 3 * 2 * 8 and attn.proj.in_features == 16
    mask = torch.zeros(4, 8)
    mask[keep] = 1.0
    with torch.no_grad():
        original.proj.weight.mul_(mask.reshape(1, -1))
    x = torch.randn(2, 5, 32)
    torch.testing.assert_close(attn(x), original(x), atol=1e-5, rtol=1e-5)


def test_int8_round_trip_error_is_half_a_step():
    torch.manual_seed(2)
    layer = nn.Linear(32, 16)
    q = quantize_linear(layer, "int8")
    assert isinstance(q, Int8Linear) and q.weight_int8.dtype == torch.int8
    step = layer.weight.detach().abs().amax(dim=1, keepdim=True) / 127
    err = (q.dequantized_weight() - layer.weight.detach()).abs()
    assert bool((err <= step / 2 + 1e-7).all())
    x = torch.randn(4, 32)
    torch.testing.assert_close(q(x), layer(x), atol=0.05, rtol=0.05)


def test_fp16_and_lowrank_factors_are_quantized():
    layer = nn.Linear(32, 16)
    half = quantize_linear(layer, "fp16")
    assert isinstance(half, Fp16Linear) and half.weight.dtype == torch.float16
    lr = quantize_linear(factorize(layer, 8), "int8")
    assert isinstance(lr.first, Int8Linear) and isinstance(lr.second, Int8Linear)
    with pytest.raises(ConfigError, match="unsupported precision 'int2'"):
        quantize_linear(layer, "int2")


def test_compress_composes_and_keeps_original(tiny_vit):
    before = {k: v.clone() for k, v in tiny_vit.state_dict().items()}
    cfg = CompressionConfig.make(
        {"blocks.0.mlp.fc1": LinearConfig("int8", 8), "blocks.0.attn.proj": LinearConfig("fp16", None)},
        prune_heads={"blocks.0.attn": 0.25},
        prune_mlp={"blocks.0.mlp": 0.5},
    )
    out = compress(tiny_vit, cfg)
    for k, v in tiny_vit.state_dict().items():
        assert torch.equal(v, before[k]), f"compress modified the original {k}"
    fc1 = out.blocks[0].mlp.fc1
    assert isinstance(fc1, LowRankLinear) and isinstance(fc1.first, Int8Linear)
    assert (fc1.in_features, fc1.out_features) == (32, 32)  # 64 hidden pruned by half
    assert out.blocks[0].attn.num_heads == 3
    assert isinstance(out.blocks[0].attn.proj, Fp16Linear)
    # names stay stable: discovery on the compressed model finds the same units
    assert discover(out).unit_names() == discover(tiny_vit).unit_names()
    assert out(torch.randn(2, 1, 8, 8)).shape == (2, 5)
    p0, s0 = model_stats(tiny_vit)
    p1, s1 = model_stats(out)
    assert p1 < p0 and s1 < s0


def test_compress_rejects_an_invalid_config(tiny_vit):
    with pytest.raises(ConfigError, match="rank 99 is impossible"):
        compress(tiny_vit, CompressionConfig.make({"blocks.0.mlp.fc1": LinearConfig("fp32", 99)}))


def test_distillation_moves_student_towards_teacher(tiny_vit):
    from torch.utils.data import TensorDataset

    torch.manual_seed(3)
    data = TensorDataset(torch.randn(64, 1, 8, 8), torch.randint(0, 5, (64,)))
    student = compress(tiny_vit, CompressionConfig.make({u.name: LinearConfig("fp32", 2) for u in discover(tiny_vit).linears}))
    for p in student.parameters():
        p.requires_grad_(True)
    x = data.tensors[0]

    def gap():
        with torch.no_grad():
            return float((student(x).softmax(-1) - tiny_vit(x).softmax(-1)).abs().mean())

    before = gap()
    losses = distill(student, tiny_vit, data, steps=60, seed=0)
    assert len(losses) == 60 and gap() < before

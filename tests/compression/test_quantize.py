import pytest
import torch
from torch import nn

from vitune.compression.lowrank import factorize
from vitune.compression.methods import CompressionMethods
from vitune.compression.modules import Fp16Linear, Int4Linear, Int8Linear, W8A8Linear
from vitune.compression.quantize import act_scale, quantize_linear, quantize_model
from vitune.errors import ConfigError


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


@pytest.mark.parametrize("in_features,group", [(32, 8), (30, 8), (7, 4)])
def test_int4_group_wise_round_trip_error_and_packing(in_features, group):
    torch.manual_seed(3)
    layer = nn.Linear(in_features, 6)
    q = quantize_linear(layer, "int4", methods=CompressionMethods(int4_group_size=group))
    assert isinstance(q, Int4Linear) and q.packed.dtype == torch.uint8
    groups = -(-in_features // group)
    assert q.packed.shape == (6, groups * group // 2) and q.scale.shape == (6, groups)  # two codes per byte
    codes = q.codes()
    assert int(codes.min()) >= -8 and int(codes.max()) <= 7
    w = layer.weight.detach()
    deq = q.dequantized_weight()
    assert deq.shape == w.shape
    for g in range(groups):
        cols = slice(g * group, min((g + 1) * group, in_features))
        step = w[:, cols].abs().amax(dim=1, keepdim=True) / 7
        assert bool(((deq[:, cols] - w[:, cols]).abs() <= step / 2 + 1e-6).all())


def test_w8a8_is_integer_arithmetic_with_calibrated_scale():
    torch.manual_seed(4)
    layer = nn.Linear(16, 8)
    x = torch.randn(64, 16)
    scale = act_scale(x, CompressionMethods(act_calibration="minmax"))
    assert scale == pytest.approx(float(x.abs().max()) / 127)
    q = W8A8Linear.from_linear(layer, scale)
    # reference: the same integer arithmetic written out by hand
    xq = torch.clamp(torch.round(x / scale), -127, 127)
    w8 = Int8Linear.from_linear(layer)
    ref = (xq @ w8.weight_int8.float().T) * (scale * w8.scale) + layer.bias
    torch.testing.assert_close(q(x), ref.detach(), atol=1e-4, rtol=1e-5)
    with torch.no_grad():
        assert float((q(x) - layer(x)).abs().max()) < 0.05


@pytest.mark.parametrize("in_features, spread", [(192, 40), (3072, 40), (3072, 127)])
def test_w8a8_eager_matmul_is_the_int32_matmul_bit_for_bit(in_features, spread):
    """The eager forward (accuracy, distillation's teacher checks) multiplies through BLAS, the
    export through the int32 matmul the TVM build runs: the two agree exactly, also where the
    sums pass 2**24 (3072 inputs at full scale: the float64 path)."""
    from vitune.compression.modules import exact_integer_matmul

    g = torch.Generator().manual_seed(in_features + spread)
    xq = torch.randint(-spread, spread + 1, (2, 5, in_features), generator=g).float()
    w = torch.randint(-spread, spread + 1, (24, in_features), generator=g).to(torch.int8)
    if spread == 127:
        xq[0, 0], w[0] = 127.0, 127  # one sum of 3072 · 127² = 49.5 M > 2**24
    fast = exact_integer_matmul(xq, w)
    slow = torch.matmul(xq.to(torch.int32), w.to(torch.int32).t()).to(torch.float32)
    assert fast.dtype == torch.float32 and torch.equal(fast, slow)
    assert (float(slow.abs().max()) > 2**24) == (spread == 127)

    layer = W8A8Linear(w, torch.rand(24) / 100, 0.05, torch.randn(24))
    x = torch.randn(3, in_features) * 4
    program = torch.export.export(layer, (x,))  # the exported graph keeps the int32 matmul
    assert "torch.int32" in str(program.graph_module.code) or "int32" in str(program.graph)
    torch.testing.assert_close(layer(x), program.module()(x), rtol=0, atol=0)


def test_percentile_calibration_clips_outliers():
    x = torch.cat([torch.randn(10000), torch.tensor([500.0])])
    mm = act_scale(x, CompressionMethods(act_calibration="minmax"))
    pc = act_scale(x, CompressionMethods(act_calibration="percentile", act_percentile=99.9))
    assert mm == pytest.approx(500 / 127) and pc < mm / 50


def test_quantize_model_calibrates_both_factors_of_a_lowrank_layer():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), factorize(nn.Linear(16, 12), 4))
    quantize_model(model, {"0": "fp16", "2": "w8a8"}, CompressionMethods(), torch.randn(32, 16))
    assert isinstance(model[0], Fp16Linear)
    assert isinstance(model[2].first, W8A8Linear) and isinstance(model[2].second, W8A8Linear)
    assert model[2].first.act_scale != model[2].second.act_scale


def test_bad_precisions_are_rejected():
    layer = nn.Linear(32, 16)
    with pytest.raises(ConfigError, match="unsupported precision 'int2'"):
        quantize_linear(layer, "int2")
    with pytest.raises(ConfigError, match="w8a8 needs a calibrated activation scale"):
        quantize_linear(layer, "w8a8", where="fc")
    with pytest.raises(ConfigError, match="w8a8 needs calibration images"):
        quantize_model(nn.Sequential(layer), {"0": "w8a8"}, CompressionMethods(), None)

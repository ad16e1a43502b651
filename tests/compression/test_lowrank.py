import pytest
import torch
from torch import nn

from vitune.compression.lowrank import WhitenedSVD, factorize, factorize_aa, factorize_aa_residual, gram, output_error
from vitune.compression.methods import CompressionMethods
from vitune.compression.modules import LowRankLinear
from vitune.errors import ConfigError


def _correlated_inputs(n=400, d=24, seed=0):
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=gen) * torch.logspace(0, -2, d)[None, :]  # strongly anisotropic
    return torch.randn(n, d, generator=gen) @ mix.T


def test_exactly_low_rank_weight_is_recovered_by_every_method():
    torch.manual_seed(0)
    layer = nn.Linear(24, 40)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(40, 5) @ torch.randn(5, 24))
    x = torch.randn(300, 24)
    for lr in (factorize(layer, 5), factorize_aa(layer, 5, x), factorize_aa_residual(layer, 5, x, x)[0]):
        assert isinstance(lr, LowRankLinear) and lr.rank == 5
        assert lr.first.weight.shape == (5, 24) and lr.second.weight.shape == (40, 5)
        torch.testing.assert_close(lr(x[:7]), layer(x[:7]), atol=1e-4, rtol=1e-4)


def test_truncated_svd_is_optimal_in_frobenius_norm():
    torch.manual_seed(1)
    layer = nn.Linear(16, 16, bias=False)
    lr = factorize(layer, 4)
    approx = lr.second.weight @ lr.first.weight
    s = torch.linalg.svdvals(layer.weight.detach())
    err = torch.linalg.norm(layer.weight.detach() - approx)
    torch.testing.assert_close(err, s[4:].pow(2).sum().sqrt(), atol=1e-4, rtol=1e-4)


def test_activation_aware_beats_plain_svd_on_output_error():
    torch.manual_seed(2)
    layer = nn.Linear(24, 32)
    x = _correlated_inputs()
    for rank in (2, 4, 8):
        plain = output_error(layer, factorize(layer, rank), x)
        aware = output_error(layer, factorize_aa(layer, rank, x, damping=1e-6), x)
        assert aware < plain
        # and it is the optimum: the error equals the whitened tail energy
        expected = WhitenedSVD(layer.weight, gram(x), 1e-6).relative_error(rank)
        assert aware == pytest.approx(expected, rel=1e-3)


def test_residual_refinement_never_ends_above_its_start_and_compensates_upstream_error():
    torch.manual_seed(3)
    layer = nn.Linear(24, 32)
    x_ref = _correlated_inputs()
    x = x_ref + 0.05 * torch.randn_like(x_ref) + 0.1  # what an approximated upstream layer delivers
    m = CompressionMethods(refine_steps=200)
    module, info = factorize_aa_residual(layer, 6, x, x_ref, m)
    assert module.rank == 6 and info["residual_rank"] == 2
    assert info["loss_end"] < info["loss_start"]
    before = factorize_aa(layer, 6, x)
    with torch.no_grad():
        target = layer(x_ref)
        assert float((module(x) - target).norm()) < float((before(x) - target).norm())


def test_rank_one_has_no_residual_term():
    layer = nn.Linear(8, 8)
    x = torch.randn(50, 8)
    module, info = factorize_aa_residual(layer, 1, x, x)
    assert info["residual_rank"] == 0 and module.rank == 1


@pytest.mark.parametrize("method", [factorize, lambda l, r, where: factorize_aa(l, r, torch.randn(20, 8), where=where)])
def test_impossible_rank_is_rejected(method):
    with pytest.raises(ConfigError, match="x: rank 9 is impossible for a 8x8 layer"):
        method(nn.Linear(8, 8), 9, where="x")


def test_rank_deficient_inputs_are_damped_not_fatal():
    layer = nn.Linear(16, 16)
    x = torch.randn(100, 3) @ torch.randn(3, 16)  # rank 3 inputs, singular Gram matrix
    lr = factorize_aa(layer, 4, x)
    assert torch.isfinite(lr.first.weight).all() and torch.isfinite(lr.second.weight).all()
    assert output_error(layer, lr, x) < 1e-2  # rank 4 covers a rank-3 input space

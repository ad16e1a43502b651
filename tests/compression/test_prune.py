import copy

import pytest
import torch

from vitune.compression.prune import prune_heads, prune_mlp, unit_scores
from vitune.errors import ConfigError
from vitune.models.layers import discover


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


@pytest.mark.parametrize("criterion", ["magnitude", "activation", "taylor"])
def test_every_criterion_scores_every_unit(tiny_vit, tiny_calib, criterion):
    layout = discover(tiny_vit)
    scores = unit_scores(tiny_vit, layout, criterion, tiny_calib.x, tiny_calib.y)
    assert set(scores) == {h.name for h in layout.heads} | {m.name for m in layout.mlps}
    assert scores["blocks.0.attn"].shape == (4,) and scores["blocks.0.mlp"].shape == (64,)
    for s in scores.values():
        assert torch.isfinite(s).all() and bool((s >= 0).all()) and float(s.sum()) > 0
    assert all(p.grad is None for p in tiny_vit.parameters())  # no gradients left behind


def test_activation_criterion_ranks_a_silent_neuron_last(tiny_vit, tiny_calib):
    mlp = tiny_vit.blocks[0].mlp
    with torch.no_grad():
        mlp.fc1.weight[7].zero_()
        mlp.fc1.bias[7] = -50.0  # GELU(-50) = 0: neuron 7 never fires on any input
    scores = unit_scores(tiny_vit, discover(tiny_vit), "activation", tiny_calib.x)
    assert int(scores["blocks.0.mlp"].argmin()) == 7
    keep = prune_mlp(mlp, 0.25, scores=scores["blocks.0.mlp"])
    assert 7 not in keep


def test_data_criteria_need_calibration_and_scores_must_fit(tiny_vit):
    layout = discover(tiny_vit)
    with pytest.raises(ConfigError, match="'taylor' needs the calibration batch"):
        unit_scores(tiny_vit, layout, "taylor")
    with pytest.raises(ConfigError, match="unknown pruning criterion 'random'"):
        unit_scores(tiny_vit, layout, "random", torch.zeros(1))
    with pytest.raises(ConfigError, match="expected 4 head scores"):
        prune_heads(tiny_vit.blocks[0].attn, 0.5, scores=torch.ones(3))

import pytest
import torch

from vitune.compression.allocate import allocate, greedy_ranks, uniform_ranks
from vitune.compression.config import CompressionConfig, LinearConfig
from vitune.errors import ConfigError
from vitune.models.layers import discover


def _params_after(model, config):
    layout = discover(model)
    total = sum(p.numel() for p in model.parameters())
    for u in layout.linears:
        r = config.linear_for(u.name).rank
        if r is not None:
            total += r * (u.in_features + u.out_features) - u.in_features * u.out_features
    return total


@pytest.mark.parametrize("budget", [0.6, 0.45])
def test_greedy_meets_the_budget_with_mixed_ranks(tiny_vit, tiny_calib, budget):
    total = sum(p.numel() for p in tiny_vit.parameters())
    cfg = greedy_ranks(tiny_vit, discover(tiny_vit), tiny_calib.x, budget)
    assert _params_after(tiny_vit, cfg) <= budget * total
    ranks = [spec.rank for _, spec in cfg.linear_items]
    assert ranks and all(r is not None for r in ranks)
    assert cfg.methods.lowrank == "aa-residual"


def test_greedy_spends_the_budget_where_the_error_is_lowest(tiny_vit, tiny_calib):
    # make one layer exactly rank 2: greedy must cut it first (zero error for big savings)
    fc1 = tiny_vit.blocks[1].mlp.fc1
    with torch.no_grad():
        fc1.weight.copy_(torch.randn(fc1.out_features, 2) @ torch.randn(2, fc1.in_features))
    cfg = greedy_ranks(tiny_vit, discover(tiny_vit), tiny_calib.x, 0.9)
    assert cfg.linear_for("blocks.1.mlp.fc1").rank is not None and cfg.linear_for("blocks.1.mlp.fc1").rank <= 2


def test_uniform_uses_one_fraction(tiny_vit):
    cfg = uniform_ranks(tiny_vit, discover(tiny_vit), 0.5)
    total = sum(p.numel() for p in tiny_vit.parameters())
    assert _params_after(tiny_vit, cfg) <= 0.5 * total
    fractions = {round(spec.rank / min(u.in_features, u.out_features), 1) for u in discover(tiny_vit).linears for spec in [cfg.linear_for(u.name)]}
    assert len(fractions) == 1


def test_impossible_budgets_are_rejected(tiny_vit, tiny_calib):
    layout = discover(tiny_vit)
    with pytest.raises(ConfigError, match="params budget 1.5 must be in"):
        allocate("greedy-rank", tiny_vit, layout, tiny_calib.x, 1.5)
    with pytest.raises(ConfigError, match="unreachable"):
        allocate("greedy-rank", tiny_vit, layout, tiny_calib.x, 0.01)
    with pytest.raises(ConfigError, match="unreachable"):
        allocate("uniform-rank", tiny_vit, layout, tiny_calib.x, 0.01)
    with pytest.raises(ConfigError, match="unknown strategy 'random'"):
        allocate("random", tiny_vit, layout, tiny_calib.x, 0.5)


def test_the_menu_walk_steps_down_the_menu_and_cuts_the_cheapest_error_first(tiny_vit, tiny_calib):
    from vitune.compression.allocate import menu_rank_walk

    layout = discover(tiny_vit)
    fc1 = tiny_vit.blocks[1].mlp.fc1
    with torch.no_grad():  # rank 2: its fractions 0.5 and 0.25 (ranks 16 and 8 of 32) lose nothing
        fc1.weight.copy_(torch.randn(fc1.out_features, 2) @ torch.randn(2, fc1.in_features))
    menu = (1.0, 0.5, 0.25)
    fcs = ("blocks.0.mlp.fc1", "blocks.0.mlp.fc2")  # a tied group moves as one
    groups = {"blocks.0.mlp.fc*:rank_fraction": (fcs, menu)}
    groups |= {f"{u.name}:rank_fraction": ((u.name,), menu) for u in layout.linears if u.name not in fcs}
    walk = menu_rank_walk(tiny_vit, layout, tiny_calib.x, groups)
    kept = [k for k, _ in walk]
    assert kept == sorted(kept, reverse=True) and len(set(kept)) == len(kept) and kept[0] < 1.0  # every step saves
    assert walk[0][1] == {"blocks.1.mlp.fc1:rank_fraction": 0.5}  # the free cut first
    assert all(set(state.values()) <= {0.5, 0.25} and set(state) <= set(groups) for _, state in walk)
    # the end: every group at the smallest fraction below break-even (the square attn.proj, 32 x 32,
    # saves nothing at rank 16, so it can only go to 0.25)
    assert walk[-1][1] == {g: 0.25 for g in groups}
    total = sum(p.numel() for p in tiny_vit.parameters())
    end = {n: 0.25 for g, (layers, _) in groups.items() for n in layers}
    ranks = {u.name: max(1, round(end[u.name] * min(u.in_features, u.out_features))) for u in layout.linears}
    assert walk[-1][0] == pytest.approx(_params_after(tiny_vit, CompressionConfig.make({n: LinearConfig("fp32", r) for n, r in ranks.items()})) / total)

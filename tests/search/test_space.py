import optuna

from vitune.models.default import build_digits_vit
from vitune.models.layers import discover
from vitune.search.space import SearchSpace
from vitune.search.study import baseline_params
from vitune.search.studyfile import Override, SpaceSpec


def space(**kw):
    return SearchSpace.build(SpaceSpec(**kw), discover(build_digits_vit()))


def test_fixed_trial_gives_the_config_it_says():
    s = space()
    params = s.identity_params()
    params.update({"blocks.1.mlp.fc1:precision": "int8", "blocks.1.mlp.fc1:rank_fraction": 0.25, "blocks.1.mlp:prune_mlp": 0.5})
    cfg = s.suggest(optuna.trial.FixedTrial(params))
    # fc1 is 64 → 256, pruned to 128 hidden: rank = 0.25 × min(64, 128) = 16
    assert cfg.linear_for("blocks.1.mlp.fc1").rank == 16
    assert cfg.linear_for("blocks.1.mlp.fc1").precision == "int8"
    assert cfg.prune_mlp == {"blocks.1.mlp": 0.5}


def test_identity_params_give_the_uncompressed_model():
    s = space()
    assert s.suggest(optuna.trial.FixedTrial(s.identity_params())).is_identity


def test_single_value_menus_are_fixed_not_sampled():
    s = space(precision=("fp32",), overrides=(Override("blocks.0.*", (("rank_fraction", (1.0,)),)),))
    params = s.identity_params()
    assert not any(k.endswith(":precision") for k in params)
    assert "blocks.0.attn.qkv:rank_fraction" not in params and "blocks.1.attn.qkv:rank_fraction" in params


def test_baselines_are_uniform_and_distinct():
    s = space()
    base = baseline_params(s)
    assert base[0] == s.identity_params()
    configs = [s.suggest(optuna.trial.FixedTrial(p)) for p in base]
    assert len({c.key for c in configs}) == len(configs)
    # fp16, int8, two rank fractions below 1.0, two ratios each for heads and MLP
    assert len(base) == 1 + 2 + 2 + 2 + 2


def test_an_override_or_tie_that_matches_no_layer_is_refused_naming_the_file():
    import pytest

    from vitune.errors import ConfigError
    from vitune.search.studyfile import Tie

    layout = discover(build_digits_vit())
    bad = SpaceSpec(overrides=(Override("blocks.0.*", (("precision", ("fp32",)),)), Override("blocks.9.*", (("precision", ("fp32",)),))))
    with pytest.raises(ConfigError, match=r"^s\.toml \[\[space\.override\]\] #2 layers = 'blocks\.9\.\*' matches no layer of the model \(layers look like blocks\.0\.attn\.qkv"):
        SearchSpace.build(bad, layout, where="s.toml")
    with pytest.raises(ConfigError, match=r"^s\.toml \[\[space\.tie\]\] layers = 'head\*' matches no layer"):
        SearchSpace.build(SpaceSpec(ties=(Tie("head*", ("precision",)),)), layout, where="s.toml")
    assert SearchSpace.build(SpaceSpec(overrides=(Override("blocks.3.mlp", (("prune_mlp", (0.0,)),)),)), layout).choices  # an MLP unit matches


def _unit_choices(config, block: str, unit: str) -> tuple:
    """One attention or MLP unit's choices in ``config``: each linear's (precision, has a rank) and the pruning."""
    linears = sorted((n, spec.precision, spec.rank is not None) for n, spec in config.linear.items() if n.startswith(f"blocks.{block}.{unit}."))
    pruned = config.prune_heads if unit == "attn" else config.prune_mlp
    return tuple((n.split(".", 2)[2], p, r) for n, p, r in linears), pruned.get(f"blocks.{block}.{unit}", 0.0)


def test_covering_configurations_put_every_unit_in_every_combination_of_its_menus():
    """What `vitune tune --cover` tunes: every attention and MLP unit takes each combination of its
    linears' precision and rank and its pruning in some block of some configuration (the first
    block's override keeps it fp32), so every unit a random configuration holds was built."""
    s = space(precision=("fp32", "int8"), rank_fraction=(1.0, 0.5), prune_heads=(0.0, 0.5), prune_mlp=(0.0, 0.5),
              overrides=(Override("blocks.0.*", (("precision", ("fp32",)),)),))
    cover = s.covering_configs()
    # an attention unit: (2 precisions x 2 ranks)^2 x 2 prunings = 32 combinations over 4 blocks
    assert len(cover) == 8 and len({c.key for c in cover}) == len(cover)
    assert not any(c.is_identity or c.distill_steps for c in cover)
    assert all(c.linear_for(n).precision == "fp32" for c in cover for n in c.linear if n.startswith("blocks.0."))
    blocks = [str(i) for i in range(4)]
    built = {(unit, _unit_choices(c, b, unit)) for c in cover for b in blocks for unit in ("attn", "mlp")}
    assert len({u for u in built if u[0] == "attn"}) == 32 and len({u for u in built if u[0] == "mlp"}) == 32
    for config in s.random_configs(30, seed=1):
        for b in blocks:
            for unit in ("attn", "mlp"):
                assert (unit, _unit_choices(config, b, unit)) in built


def test_covering_configurations_of_a_space_with_tied_knobs_take_each_tied_value():
    from vitune.search.studyfile import Tie

    s = space(precision=("fp32", "int8"), rank_fraction=(1.0, 0.5), prune_heads=(0.0,), prune_mlp=(0.0,),
              ties=(Tie("blocks.*.mlp.fc2", ("precision",)),))
    cover = s.covering_configs()
    fc2 = {c.linear_for("blocks.1.mlp.fc2").precision for c in cover}
    assert fc2 == {"fp32", "int8"} and all(len({c.linear_for(f"blocks.{b}.mlp.fc2").precision for b in range(4)}) == 1 for c in cover)

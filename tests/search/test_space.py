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


def test_uniform_configurations_are_every_combination_of_one_value_per_knob():
    """What `vitune tune --uniform` tunes: each combination of precision × rank × head and MLP
    pruning set on every layer whose menu has it (the first block's override keeps it fp32), so
    every (layer kind, its own knobs) pair a random configuration can hold appears in one."""
    s = space(precision=("fp32", "int8"), rank_fraction=(1.0, 0.5), prune_heads=(0.0, 0.5), prune_mlp=(0.0, 0.5),
              overrides=(Override("blocks.0.*", (("precision", ("fp32",)),)),))
    uniform = s.uniform_configs()
    assert len(uniform) == 2 * 2 * 2 * 2 - 1 and len({c.key for c in uniform}) == len(uniform)  # the uncompressed one left out
    assert not any(c.is_identity or c.distill_steps for c in uniform)
    seen = set()
    for c in uniform:
        for name, spec in c.linear.items():
            block = name.split(".")[1]
            pruned = c.prune_heads.get(f"blocks.{block}.attn", 0.0) if ".attn." in name else c.prune_mlp.get(f"blocks.{block}.mlp", 0.0)
            seen.add((name.split(".", 2)[2], spec.precision, spec.rank is not None, pruned))
        assert all(c.linear[n].precision == "fp32" for n in c.linear if n.startswith("blocks.0."))
    for config in s.random_configs(20, seed=1):  # each layer's own choices appear in some uniform configuration
        for name, spec in config.linear.items():
            block = name.split(".")[1]
            pruned = config.prune_heads.get(f"blocks.{block}.attn", 0.0) if ".attn." in name else config.prune_mlp.get(f"blocks.{block}.mlp", 0.0)
            assert (name.split(".", 2)[2], spec.precision, spec.rank is not None, pruned) in seen

"""bench/value.py: the configuration a user brings (``--config``), in either form it may come in."""

import json
from pathlib import Path

import pytest

from tests.bench import load_bench
from vitune.errors import ConfigError
from vitune.models.default import RECIPES, build_digits_vit
from vitune.models.layers import discover
from vitune.search.space import SearchSpace
from vitune.search.studyfile import SpaceSpec

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def value():
    return load_bench("value")


def test_a_configuration_reads_bare_or_from_an_export_record(value, tmp_path):
    from vitune.search.export import FORMAT

    space = SearchSpace.build(SpaceSpec(rank_fraction=(1.0, 0.5)), discover(build_digits_vit()))
    config = space.to_config({**space.identity_params(), "blocks.1.mlp.fc1:rank_fraction": 0.5})
    bare = tmp_path / "bare.json"
    bare.write_text(config.to_json())
    assert value.read_config(bare).key == config.key
    record = tmp_path / "record.json"
    record.write_text(json.dumps({"format": FORMAT, "model": {}, "data": {}, "target": {}, "metrics": {}, "config": config.to_dict()}))
    assert value.read_config(record).key == config.key
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"lienar": {}}))  # a misspelt key
    with pytest.raises(ConfigError, match="bad.json"):
        value.read_config(bad)


@pytest.mark.parametrize("path", sorted((ROOT / "bench" / "configs").glob("digits_base-*.json")), ids=lambda p: p.stem)
def test_the_committed_configurations_fit_the_model_they_name_and_its_study_space(value, path):
    """bench/configs/digits_base-*.json: the fixed configurations the README's digits_vit_base
    figures ship; each is one the study's space can choose."""
    from vitune.search.studyfile import load_study_file

    from vitune.compression.config import CompressionConfig
    from vitune.compression.pipeline import compress

    config = value.read_config(path)
    model = build_digits_vit(RECIPES["digits_vit_base"])
    config.validate(discover(model))
    # a rank is a fraction of the layer as pruned (a block that lost a head has a narrower proj)
    pruned = compress(model, CompressionConfig.from_dict({"prune_heads": dict(config.prune_heads_items), "prune_mlp": dict(config.prune_mlp_items)}))
    layout = discover(pruned)
    space = load_study_file(ROOT / "studies" / "digits_base.toml").space
    for name, spec in config.linear_items:
        unit = next(u for u in layout.linears if u.name == name)
        if spec.rank is not None:
            assert spec.rank / min(unit.in_features, unit.out_features) in space.menu_for(name, "rank_fraction"), name
        assert spec.precision in space.menu_for(name, "precision"), name
    for name, share in config.prune_mlp_items:
        assert share in space.menu_for(name, "prune_mlp"), name
    for name, share in config.prune_heads_items:
        assert share in space.menu_for(name, "prune_heads"), name
    if path.stem == "digits_base-lowrank":
        ranks = {name: spec.rank for name, spec in config.linear_items}
        assert ranks["blocks.3.mlp.fc1"] == 48 and ranks["blocks.0.attn.qkv"] == 96 and config.summary() == "lowrank:12"

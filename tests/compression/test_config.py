import pytest

from vitune.compression.config import CompressionConfig, LinearConfig
from vitune.compression.methods import CompressionMethods
from vitune.errors import ConfigError
from vitune.models.default import build_digits_vit
from vitune.models.layers import discover


@pytest.fixture(scope="module")
def layout():
    return discover(build_digits_vit())


def sample():
    return CompressionConfig.make(
        {"blocks.0.attn.qkv": LinearConfig("int8", 16), "blocks.1.mlp.fc2": LinearConfig("fp16")},
        prune_heads={"blocks.0.attn": 0.25},
        prune_mlp={"blocks.1.mlp": 0.5, "blocks.2.mlp": 0.0},
        distill_steps=10,
    )


def test_json_round_trip():
    cfg = sample()
    again = CompressionConfig.from_json(cfg.to_json())
    assert again == cfg and again.key == cfg.key
    assert "blocks.2.mlp" not in again.prune_mlp  # no-op entries are dropped
    assert cfg.summary() == "int8:1 lowrank:1 fp16:1 heads-:1 mlp-:1 kd:10"


def test_methods_are_part_of_the_record_and_the_key():
    from vitune.compression.methods import CompressionMethods

    cfg = sample()
    other = cfg.replace(methods=CompressionMethods(lowrank="svd"))
    assert other != cfg and other.key != cfg.key
    again = CompressionConfig.from_json(other.to_json())
    assert again.methods.lowrank == "svd" and again == other
    assert cfg.replace(distill_steps=0).distill_steps == 0 and cfg.replace(distill_steps=0).linear == cfg.linear


@pytest.mark.parametrize(
    "methods,message",
    [
        ({"lowrank": "qr"}, r"config\.methods\.lowrank: expected one of svd, aa, aa-residual, got 'qr'"),
        ({"residual_share": 0.9}, r"config\.methods\.residual_share: expected a number in \[0, 0\.5\], got 0\.9"),
        ({"act_calibration": "mse"}, r"config\.methods\.act_calibration: expected one of minmax, percentile, got 'mse'"),
        ({"calib_images": 0}, r"config\.methods\.calib_images: expected an integer >= 1"),
        ({"kd_alpha": "high"}, r"config\.methods\.kd_alpha: expected float, got 'high'"),
        ({"bogus": 1}, r"config\.methods: unknown key 'bogus'"),
    ],
)
def test_bad_methods_are_rejected_with_their_key(methods, message):
    with pytest.raises(ConfigError, match=message):
        CompressionConfig.from_dict({"methods": methods})


def test_a_configuration_recorded_before_a_setting_existed_reads_as_it_was_made(monkeypatch):
    # were the default to change, a configuration recorded without the key (an older trial or
    # export) must still read as what vitune did then, not as the new default
    from vitune.compression import methods as methods_module

    monkeypatch.setattr(methods_module, "BEFORE_ADDED", {"refine_solver": "als"})
    recorded = {k: v for k, v in CompressionMethods().to_dict().items() if k != "refine_solver"}
    assert CompressionConfig.from_dict({"methods": recorded}).methods.refine_solver == "als"
    assert CompressionConfig.from_dict({}).methods.refine_solver == "als"
    assert CompressionConfig.from_dict({"methods": {**recorded, "refine_solver": "adam"}}).methods.refine_solver == "adam"
    with pytest.raises(ConfigError, match=r"config\.methods: unknown key 'bogus'"):
        CompressionConfig.from_dict({"methods": {**recorded, "bogus": 1}})


def test_identity():
    assert CompressionConfig.identity().is_identity
    assert CompressionConfig.make({"blocks.0.attn.qkv": LinearConfig()}).is_identity


def test_valid_config_passes(layout):
    assert sample().validate(layout) is not None


@pytest.mark.parametrize(
    "cfg,message",
    [
        (CompressionConfig.make({"blocks.7.mlp.fc1": LinearConfig("int8")}), r"unknown linear layer 'blocks\.7\.mlp\.fc1'"),
        (CompressionConfig.make({"blocks.0.mlp.fc1": LinearConfig("fp32", 65)}), r"blocks\.0\.mlp\.fc1: rank 65 is impossible.*between 1 and 64"),
        (CompressionConfig.make({"blocks.0.mlp.fc1": LinearConfig("int3")}), r"blocks\.0\.mlp\.fc1: unsupported precision 'int3'"),
        (CompressionConfig.make(prune_heads={"blocks.0.attn": 1.0}), r"prune_heads\['blocks\.0\.attn'\].*outside \[0, 1\)"),
        (CompressionConfig.make(prune_mlp={"blocks.0.mlp": -0.1}), r"prune_mlp\['blocks\.0\.mlp'\].*outside"),
        (CompressionConfig.make(prune_mlp={"blocks.0.attn": 0.5}), r"unknown MLP unit 'blocks\.0\.attn'"),
    ],
)
def test_validation_errors_name_layer_and_value(layout, cfg, message):
    with pytest.raises(ConfigError, match=message):
        cfg.validate(layout)


def test_rank_is_checked_after_pruning(layout):
    # fc2 reads the MLP hidden width: 256 → 64 after pruning 75 %, so rank 64 is fine but the
    # proj layer after pruning half the heads reads only 32 features.
    ok = CompressionConfig.make({"blocks.0.mlp.fc2": LinearConfig("fp32", 64)}, prune_mlp={"blocks.0.mlp": 0.75})
    ok.validate(layout)
    bad = CompressionConfig.make({"blocks.0.attn.proj": LinearConfig("fp32", 40)}, prune_heads={"blocks.0.attn": 0.5})
    with pytest.raises(ConfigError, match=r"rank 40 is impossible; the layer is 64x32"):
        bad.validate(layout)


@pytest.mark.parametrize(
    "data,message",
    [
        ({"linear": {"blocks.0.attn.qkv": {"precision": "int8", "bits": 4}}}, r"unknown key 'bits'"),
        ({"linear": {"blocks.0.attn.qkv": {"rank": "8"}}}, r"rank: expected an integer"),
        ({"prune_mlp": {"blocks.0.mlp": "half"}}, r"expected a number"),
        ({"distill_steps": -1}, r"distill_steps: expected an integer >= 0"),
        ({"layers": {}}, r"unknown key 'layers'"),
    ],
)
def test_from_dict_rejects_bad_input(data, message):
    with pytest.raises(ConfigError, match=message):
        CompressionConfig.from_dict(data)

"""The contract every transform (and every method of it) meets, one parametrised suite.

For each variant: the original model is untouched; unit names are stable; the result is
deterministic; it is not larger than the original; and the TVM build computes what PyTorch
computes (the search scores the PyTorch model, the user deploys the TVM one).
"""

import numpy as np
import pytest
import torch

from vitune.compression.config import CompressionConfig, LinearConfig
from vitune.compression.methods import CompressionMethods
from vitune.compression.pipeline import compress
from vitune.compression.stats import model_stats
from vitune.models.layers import discover


def _linears(model, precision="fp32", rank_fraction=None):
    out = {}
    for u in discover(model).linears:
        rank = None if rank_fraction is None else max(1, int(rank_fraction * min(u.in_features, u.out_features)))
        out[u.name] = LinearConfig(precision, rank)
    return out


def _prune(model, ratio):
    layout = discover(model)
    return {h.name: ratio for h in layout.heads}, {m.name: ratio for m in layout.mlps}


VARIANTS = {
    "lowrank-svd": lambda m: CompressionConfig.make(_linears(m, rank_fraction=0.25), methods=CompressionMethods(lowrank="svd")),
    "lowrank-aa": lambda m: CompressionConfig.make(_linears(m, rank_fraction=0.25), methods=CompressionMethods(lowrank="aa")),
    "lowrank-aa-residual": lambda m: CompressionConfig.make(_linears(m, rank_fraction=0.25)),
    "prune-magnitude": lambda m: CompressionConfig.make(None, *_prune(m, 0.5), methods=CompressionMethods(prune_criterion="magnitude")),
    "prune-activation": lambda m: CompressionConfig.make(None, *_prune(m, 0.5), methods=CompressionMethods(prune_criterion="activation")),
    "prune-taylor": lambda m: CompressionConfig.make(None, *_prune(m, 0.5), methods=CompressionMethods(prune_criterion="taylor")),
    "fp16": lambda m: CompressionConfig.make(_linears(m, "fp16")),
    "int8": lambda m: CompressionConfig.make(_linears(m, "int8")),
    "int4": lambda m: CompressionConfig.make(_linears(m, "int4"), methods=CompressionMethods(int4_group_size=8)),
    "w8a8-minmax": lambda m: CompressionConfig.make(_linears(m, "w8a8"), methods=CompressionMethods(act_calibration="minmax")),
    "w8a8-percentile": lambda m: CompressionConfig.make(_linears(m, "w8a8")),
    "all-composed": lambda m: CompressionConfig.make(_linears(m, "w8a8", 0.5), *_prune(m, 0.25), distill_steps=3),
    "kd-hidden": lambda m: CompressionConfig.make(
        _linears(m, rank_fraction=0.25), distill_steps=3, methods=CompressionMethods(kd_hidden_weight=1.0)
    ),
}


@pytest.fixture()
def train_data():
    from torch.utils.data import TensorDataset

    gen = torch.Generator().manual_seed(7)
    return TensorDataset(torch.randn(32, 1, 8, 8, generator=gen), torch.randint(0, 5, (32,), generator=gen))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_transform_contract(variant, tiny_vit, tiny_calib, train_data, fast_target):
    from vitune.targets.compile import compile_model
    from vitune.targets.runner import runner_for

    config = VARIANTS[variant](tiny_vit)
    before = {k: v.clone() for k, v in tiny_vit.state_dict().items()}
    out = compress(tiny_vit, config, train_data, tiny_calib)
    again = compress(tiny_vit, config, train_data, tiny_calib)
    for k, v in tiny_vit.state_dict().items():
        assert torch.equal(v, before[k]), f"compress modified the original {k}"
    assert discover(out).unit_names() == discover(tiny_vit).unit_names()
    x = tiny_calib.x[:4]
    with torch.no_grad():
        y = out(x)
        torch.testing.assert_close(again(x), y, atol=0, rtol=0)  # deterministic
    assert y.shape == (4, 5) and torch.isfinite(y).all()
    assert all(not p.requires_grad for p in out.parameters())
    p0, s0 = model_stats(tiny_vit)
    p1, s1 = model_stats(out)
    assert s1 <= s0  # bytes never grow; quantization scales may add a few parameters
    assert p1 <= p0 * 1.05

    compiled = compile_model(out, x[:1], fast_target)
    got = runner_for(fast_target).run(compiled, x[:1].numpy())
    ref = y[:1].numpy()
    assert np.abs(got - ref).max() <= 1e-3 * max(1.0, float(np.abs(ref).max())), f"{variant}: TVM differs from PyTorch"


def test_missing_calibration_is_a_clear_error(tiny_vit):
    from vitune.errors import ConfigError

    with pytest.raises(ConfigError, match="needs calibration images"):
        compress(tiny_vit, VARIANTS["lowrank-aa"](tiny_vit))
    with pytest.raises(ConfigError, match="distill_steps > 0 needs the training split"):
        compress(tiny_vit, CompressionConfig.make(distill_steps=2))


def test_composition_order_and_shapes(tiny_vit, tiny_calib):
    from vitune.compression.modules import Fp16Linear, Int8Linear, LowRankLinear

    cfg = CompressionConfig.make(
        {"blocks.0.mlp.fc1": LinearConfig("int8", 8), "blocks.0.attn.proj": LinearConfig("fp16", None)},
        prune_heads={"blocks.0.attn": 0.25},
        prune_mlp={"blocks.0.mlp": 0.5},
    )
    out = compress(tiny_vit, cfg, calibration=tiny_calib)
    fc1 = out.blocks[0].mlp.fc1
    assert isinstance(fc1, LowRankLinear) and isinstance(fc1.first, Int8Linear)  # prune → low-rank → quantize factors
    assert (fc1.in_features, fc1.out_features) == (32, 32)  # 64 hidden pruned by half
    assert out.blocks[0].attn.num_heads == 3
    assert isinstance(out.blocks[0].attn.proj, Fp16Linear)


def test_compress_rejects_an_invalid_config(tiny_vit):
    from vitune.errors import ConfigError

    with pytest.raises(ConfigError, match="rank 99 is impossible"):
        compress(tiny_vit, CompressionConfig.make({"blocks.0.mlp.fc1": LinearConfig("fp32", 99)}))


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_distillation_moves_student_towards_teacher(precision, tiny_vit, tiny_calib, train_data):
    from vitune.compression.distill import DistillSettings, distill

    def student_of():
        student = compress(tiny_vit, CompressionConfig.make(_linears(tiny_vit, rank_fraction=0.1), methods=CompressionMethods(lowrank="svd")))
        for p in student.parameters():
            p.requires_grad_(True)
        return student

    student = student_of()
    x = train_data.tensors[0]

    def gap():
        with torch.no_grad():
            return float((student(x).softmax(-1) - tiny_vit(x).softmax(-1)).abs().mean())

    before = gap()
    losses = distill(student, tiny_vit, train_data, steps=60, settings=DistillSettings(hidden_weight=0.5, precision=precision), seed=0)
    assert len(losses) == 60 and gap() < before
    assert all(p.dtype == torch.float32 for p in student.parameters())  # autocast: the weights stay float32
    if precision == "bfloat16":  # it did run in bfloat16: not the float32 student, but near it
        exact = student_of()
        distill(exact, tiny_vit, train_data, steps=60, settings=DistillSettings(hidden_weight=0.5), seed=0)
        diffs = [float((a - b).abs().max()) for a, b in zip(student.parameters(), exact.parameters())]
        assert 0 < max(diffs) < 0.05


@pytest.mark.parametrize("hidden_weight", [0.0, 0.5])
def test_teacher_targets_are_computed_once_per_study_and_change_nothing(hidden_weight, tiny_vit, tiny_calib, train_data):
    """Two candidates that distil (5 and 3 steps) through one study's calibration: the teacher
    runs 5 times in all, and each student comes out exactly as without the shared targets."""
    from vitune.compression.calibrate import Calibration
    from vitune.compression.distill import TeacherTargets

    methods = CompressionMethods(lowrank="svd", kd_hidden_weight=hidden_weight)
    configs = [CompressionConfig.make(_linears(tiny_vit, rank_fraction=f), distill_steps=s, methods=methods) for f, s in ((0.25, 5), (0.5, 3))]
    shared = tiny_calib
    for config in configs:
        cached = compress(tiny_vit, config, train_data=train_data, calibration=shared)
        fresh = compress(tiny_vit, config, train_data=train_data, calibration=Calibration(tiny_calib.x, tiny_calib.y))
        for (name, a), (_, b) in zip(cached.state_dict().items(), fresh.state_dict().items()):
            assert torch.equal(a, b), name
    (targets,) = [v for v in shared._cache.values() if isinstance(v, TeacherTargets)]
    assert targets.forwards == 5


def test_teacher_targets_beyond_their_memory_are_recomputed(tiny_vit, train_data):
    from vitune.compression.distill import DistillSettings, TeacherTargets, distill

    settings = DistillSettings(hidden_weight=0.5, batch_size=8)
    one_step = 8 * 5 * 32 * 4  # 8 images, 5 tokens (4 patches and the class token), width 32, float32
    targets = TeacherTargets(tiny_vit, train_data, settings, keep_bytes=2 * one_step)
    student = compress(tiny_vit, CompressionConfig.make(_linears(tiny_vit, rank_fraction=0.5), methods=CompressionMethods(lowrank="svd")))
    for p in student.parameters():
        p.requires_grad_(True)
    distill(student, tiny_vit, train_data, 4, settings, targets=targets)
    assert targets.forwards == 4
    distill(student, tiny_vit, train_data, 4, settings, targets=targets)
    assert targets.forwards == 6  # steps 0 and 1 kept their tokens, 2 and 3 ran the teacher again
    with pytest.raises(ValueError, match="another teacher"):
        distill(student, tiny_vit, train_data, 1, settings, seed=1, targets=targets)

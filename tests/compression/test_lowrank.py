import pytest
import torch
from torch import nn

from vitune.compression.lowrank import WhitenedSVD, factorize, factorize_aa, factorize_aa_residual, gram, output_error
from vitune.compression.methods import REFINE_SOLVERS, CompressionMethods
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


@pytest.mark.parametrize("solver", REFINE_SOLVERS)
def test_residual_refinement_never_ends_above_its_start_and_compensates_upstream_error(solver):
    torch.manual_seed(3)
    layer = nn.Linear(24, 32)
    x_ref = _correlated_inputs()
    x = x_ref + 0.05 * torch.randn_like(x_ref) + 0.1  # what an approximated upstream layer delivers
    m = CompressionMethods(refine_steps=200, refine_solver=solver)
    module, info = factorize_aa_residual(layer, 6, x, x_ref, m)
    assert module.rank == 6 and info["residual_rank"] == 2
    assert info["loss_end"] < info["loss_start"]
    before = factorize_aa(layer, 6, x)
    with torch.no_grad():
        target = layer(x_ref)
        assert float((module(x) - target).norm()) < float((before(x) - target).norm())


@pytest.mark.parametrize("solver", REFINE_SOLVERS)
def test_rank_one_has_no_residual_term(solver):
    layer = nn.Linear(8, 8)
    x = torch.randn(50, 8)
    module, info = factorize_aa_residual(layer, 1, x, x + 0.1, CompressionMethods(refine_solver=solver))
    assert info["residual_rank"] == 0 and module.rank == 1
    assert info["loss_end"] <= info["loss_start"]  # the bias alone still compensates the shift


@pytest.mark.parametrize(("damping", "margin"), [(1e-9, 1e-6), (1e-3, 1e-3)])
def test_least_squares_refinement_fits_at_least_as_well_as_many_adam_steps(damping, margin):
    """ALS solves each factor exactly (no step size): in 50 sweeps it ends at or below where 400
    Adam steps end (within a thousandth once its D step is damped like the whitening, which
    trades a little of the calibration loss for factors int8 can hold), and the module it
    returns computes the loss it reports."""
    torch.manual_seed(4)
    layer = nn.Linear(24, 40)
    x_ref = _correlated_inputs()
    x = x_ref @ (torch.eye(24) + 0.05 * torch.randn(24, 24)) + 0.2  # upstream error to compensate
    adam = factorize_aa_residual(layer, 8, x, x_ref, CompressionMethods(refine_solver="adam", refine_steps=400, damping=damping))[1]
    module, als = factorize_aa_residual(layer, 8, x, x_ref, CompressionMethods(refine_solver="als", refine_steps=50, damping=damping))
    assert als["loss_end"] < als["loss_start"]
    assert als["loss_end"] <= adam["loss_end"] * (1 + margin)
    with torch.no_grad():
        target = layer(x_ref).double()
        got = float((module(x).double() - target).pow(2).sum() / target.pow(2).sum())
    assert got == pytest.approx(als["loss_end"], rel=1e-3)


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


def test_least_squares_refinement_survives_rank_deficient_inputs():
    layer = nn.Linear(16, 16)
    x_ref = torch.randn(100, 3) @ torch.randn(3, 16)  # rank 3 inputs, singular Gram matrix
    module, info = factorize_aa_residual(layer, 8, x_ref + 0.01, x_ref, CompressionMethods(refine_solver="als", refine_steps=20))
    assert torch.isfinite(module.first.weight).all() and torch.isfinite(module.second.weight).all()
    assert info["loss_end"] <= info["loss_start"]


@pytest.mark.parametrize("lowrank", ["aa", "aa-residual"])
def test_block_by_block_inputs_are_those_of_the_whole_model(default_workspace, lowrank, monkeypatch):
    """Low-rank layer after layer reads each layer's calibration inputs from its own block, the
    hidden states carried from block to block (timm ViTs run their blocks as a chain): the same
    model as a forward pass of the whole model up to each layer, with pruning and with a block
    left out between ranked ones."""
    import vitune.compression.pipeline as pipeline
    from vitune.compression.calibrate import Calibration, blocks_chain
    from vitune.compression.config import CompressionConfig, LinearConfig
    from vitune.compression.methods import CompressionMethods

    model, data = default_workspace.model, default_workspace.data
    calib = Calibration.from_dataset(data.calib, 48)
    assert blocks_chain(model, calib.x)
    methods = CompressionMethods(lowrank=lowrank, refine_steps=10)
    linear = {f"blocks.{i}.{role}": LinearConfig(rank=r) for i in (0, 2, 3) for role, r in
              (("attn.qkv", 6), ("attn.proj", 5), ("mlp.fc1", 7), ("mlp.fc2", 4))}
    config = CompressionConfig.make(linear, {"blocks.2.attn": 0.5}, {"blocks.3.mlp": 0.25}, 0, methods)
    fast = pipeline.compress(model, config, calibration=calib)
    monkeypatch.setattr(pipeline, "blocks_chain", lambda *_: False)
    slow = pipeline.compress(model, config, calibration=Calibration.from_dataset(data.calib, 48))
    x = Calibration.from_dataset(data.val, 32).x
    torch.testing.assert_close(fast(x), slow(x), rtol=1e-5, atol=1e-5)
    for name, layer in fast.named_modules():
        if hasattr(layer, "first"):
            torch.testing.assert_close(layer.first.weight, slow.get_submodule(name).first.weight, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("lowrank", ["aa", "aa-residual"])
def test_block_by_block_runs_each_ranked_block_once_per_model(default_workspace, lowrank):
    """Every layer of a block is fitted in one pass of the block (each on the inputs it gets
    after the layers before it were replaced) and the reference's layer inputs come from one
    pass of its block: at most one block pass per model, counted, not timed (capturing each
    layer's inputs in a pass of its own made four to five)."""
    from vitune.compression import pipeline
    from vitune.compression.calibrate import Calibration
    from vitune.compression.config import CompressionConfig, LinearConfig
    from vitune.compression.methods import CompressionMethods

    model, data = default_workspace.model, default_workspace.data
    calib = Calibration.from_dataset(data.calib, 48)
    assert pipeline.blocks_chain(model, calib.x)
    passes: list[int] = []
    # a pass of block i starts with its norm1 (a capture that stops at the block's entry never runs it)
    hooks = [block.norm1.register_forward_pre_hook(lambda *_, i=i: passes.append(i)) for i, block in enumerate(model.blocks)]
    linear = {f"blocks.{i}.{role}": LinearConfig(rank=4) for i in (1, 3) for role in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")}
    config = CompressionConfig.make(linear, {}, {}, 0, CompressionMethods(lowrank=lowrank, refine_steps=2))
    calib.cached(("blocks_chain", id(model)), lambda: True)
    try:
        pipeline.compress(model, config, calibration=calib)  # deep copies of the model share its hooks
    finally:
        for h in hooks:
            h.remove()
    models = 2 if lowrank == "aa-residual" else 1
    assert passes.count(1) == models and passes.count(3) == models  # ranked blocks: one pass in each model
    assert passes.count(2) == models  # the block between them: carried through once in each
    assert passes.count(0) == 1  # the hidden states at block 1's entry, once
    assert len(passes) == 1 + 3 * models


def test_a_model_whose_blocks_are_not_a_chain_is_told_apart():
    from timm.models.vision_transformer import VisionTransformer

    from vitune.compression.calibrate import blocks_chain

    class ExtraSkips(VisionTransformer):  # adds each block's input back: not a chain of blocks
        def forward_features(self, x, **kwargs):
            x = self.norm_pre(self._pos_embed(self.patch_embed(x)))
            for block in self.blocks:
                x = block(x) + x
            return self.norm(x)

    x = torch.randn(4, 1, 8, 8)
    for cls, chain in ((VisionTransformer, True), (ExtraSkips, False)):
        torch.manual_seed(0)
        vit = cls(img_size=8, patch_size=4, in_chans=1, num_classes=5, embed_dim=32, depth=3, num_heads=4).eval()
        assert blocks_chain(vit, x) is chain


@pytest.mark.parametrize("precision", ["fp32", "int8", "w8a8"])
def test_a_structural_candidate_has_the_fitted_ones_shapes_and_dtypes_without_an_svd(tiny_vit, tiny_calib, monkeypatch, precision):
    """What a latency prediction or a tuning run builds: the same modules, parameter shapes and
    dtypes as the candidate compression fits, with no SVD computed and no forward pass of the
    model (w8a8's activation scales are placeholders: no calibration images), both counted."""
    from vitune.compression.config import CompressionConfig, LinearConfig
    from vitune.compression.pipeline import compress, compress_structural
    from vitune.models.layers import discover

    config = CompressionConfig.make({u.name: LinearConfig(precision=precision, rank=4) for u in discover(tiny_vit).linears})
    fitted = compress(tiny_vit, config.replace(methods=CompressionMethods(lowrank="svd", act_calibration="minmax")), calibration=tiny_calib)
    svds = []
    real_svd = torch.linalg.svd
    monkeypatch.setattr(torch.linalg, "svd", lambda *a, **k: svds.append(1) or real_svd(*a, **k))
    forwards = []
    hook = tiny_vit.register_forward_pre_hook(lambda *_: forwards.append(1))  # deep copies share it
    try:
        structural = compress_structural(tiny_vit, config)
    finally:
        hook.remove()
    assert svds == [] and forwards == []
    assert [type(m).__name__ for m in structural.modules()] == [type(m).__name__ for m in fitted.modules()]
    shapes = {k: (tuple(v.shape), v.dtype) for k, v in structural.state_dict().items()}
    assert shapes == {k: (tuple(v.shape), v.dtype) for k, v in fitted.state_dict().items()}
    assert all(torch.isfinite(v.float()).all() for v in structural.state_dict().values())
    out = structural(tiny_calib.x[:2])
    assert out.shape == fitted(tiny_calib.x[:2]).shape and torch.isfinite(out).all()

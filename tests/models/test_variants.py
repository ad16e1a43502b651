"""ViTs beyond one class token: DeiT's distillation token and head, register tokens, no class
token with global average pooling. Each is discovered, compressed with every family, compiled
by TVM and run, and computes what the compressed torch model computes; the classifier heads are
left exactly as they were."""

import numpy as np
import pytest
import torch

from vitune.compression.calibrate import Calibration
from vitune.compression.config import CompressionConfig, LinearConfig
from vitune.compression.pipeline import compress
from vitune.models.layers import discover
from vitune.targets.compile import compile_model
from vitune.targets.runner import runner_for

SIZE = dict(img_size=16, patch_size=4, in_chans=3, num_classes=5, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2.0)


def _distilled():
    from timm.models.deit import VisionTransformerDistilled

    return VisionTransformerDistilled(**SIZE)


def _registers_no_class_token():
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(**SIZE, reg_tokens=4, class_token=False, global_pool="avg")


def _registers_and_class_token():
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(**SIZE, reg_tokens=2)


def _global_pool():
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(**SIZE, global_pool="avg", fc_norm=True)


VARIANTS = {"distilled": _distilled, "registers-no-class-token": _registers_no_class_token,
            "registers-and-class-token": _registers_and_class_token, "global-avg-pool": _global_pool}


@pytest.mark.parametrize("make", VARIANTS.values(), ids=list(VARIANTS))
def test_multi_token_vits_compress_compile_and_agree_with_torch(make, fast_target):
    torch.manual_seed(0)
    model = make().eval()
    layout = discover(model)
    assert len(layout.linears) == 8 and len(layout.heads) == 2
    config = CompressionConfig.make(
        linear={"blocks.1.attn.qkv": LinearConfig("int8", 8), "blocks.1.mlp.fc1": LinearConfig("w8a8", None),
                "blocks.0.mlp.fc2": LinearConfig("fp32", 8), "blocks.0.attn.proj": LinearConfig("int4", None)},
        prune_heads={"blocks.1.attn": 0.5}, prune_mlp={"blocks.0.mlp": 0.5},
    )
    gen = torch.Generator().manual_seed(1)
    calib = Calibration(torch.randn(32, 3, 16, 16, generator=gen), torch.zeros(32, dtype=torch.long))
    small = compress(model, config, calibration=calib).eval()
    heads = [n for n, _ in model.named_parameters() if n.startswith(("head.", "head_dist.", "fc_norm.", "norm."))]
    assert heads
    for name in heads:  # the classifier heads (and the distillation head) are untouched
        assert torch.equal(dict(small.named_parameters())[name], dict(model.named_parameters())[name]), name
    assert small.blocks[1].attn.num_heads == 2
    x = torch.randn(1, 3, 16, 16, generator=gen)
    built = compile_model(small, x, fast_target)
    got = runner_for(fast_target).run(built, x.numpy())
    with torch.no_grad():
        want = small(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)

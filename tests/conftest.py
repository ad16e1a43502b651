"""Shared fixtures: one trained default model per test session, tiny timing protocols."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

FAST_TARGET = """
name = "test-cpu"
description = "local CPU with a short timing protocol for tests"
[tvm]
target = { kind = "llvm", mcpu = "auto", num-cores = "auto" }
[runner]
kind = "local"
[protocol]
warmup = 1
number = 0
repeat = 3
min_repeat_ms = 5
"""


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory):
    """Keep the test session's trained checkpoints apart from the user's cache (one training per session),
    unless VITUNE_TEST_CACHE_DIR points at a cache to reuse across sessions."""
    path = os.environ.get("VITUNE_TEST_CACHE_DIR") or str(tmp_path_factory.mktemp("vitune-cache"))
    old = os.environ.get("VITUNE_CACHE_DIR")
    os.environ["VITUNE_CACHE_DIR"] = path
    yield Path(path)
    if old is None:
        os.environ.pop("VITUNE_CACHE_DIR", None)
    else:
        os.environ["VITUNE_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def digits():
    from vitune.data.digits import load_digits_splits

    return load_digits_splits()


@pytest.fixture(scope="session")
def default_workspace():
    """The real embedded default model (its shipped weights; trained once per session if they do not fit)."""
    from vitune.models.zoo import load_workspace
    from vitune.search.studyfile import DataSpec, ModelSpec

    return load_workspace(ModelSpec(), DataSpec(), progress=False)


@pytest.fixture(scope="session")
def fast_target_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("targets") / "test-cpu.toml"
    path.write_text(FAST_TARGET)
    return path


@pytest.fixture(scope="session")
def fast_target(fast_target_file):
    from vitune.targets import load_target

    return load_target(str(fast_target_file))


@pytest.fixture()
def tiny_vit():
    """An untrained 2-block ViT on 8x8 inputs (fast to build and compile)."""
    import torch
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(
        img_size=8, patch_size=4, in_chans=1, num_classes=5, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2.0, qkv_bias=True
    ).eval()


@pytest.fixture()
def tiny_calib():
    """A calibration batch for ``tiny_vit``: smooth random images (neighbouring pixels correlate)."""
    import torch
    import torch.nn.functional as F

    from vitune.compression.calibrate import Calibration

    gen = torch.Generator().manual_seed(1)
    x = F.interpolate(torch.randn(48, 1, 4, 4, generator=gen), size=(8, 8), mode="bilinear", align_corners=False)
    return Calibration(x, torch.randint(0, 5, (48,), generator=gen))

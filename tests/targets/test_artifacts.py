"""Deployment artifacts for every kind of built-in target, checked by their ELF headers."""

import shutil

import pytest

from vitune.targets import load_target
from vitune.targets.check import probe_model
from vitune.targets.compile import compile_model, device_code_kinds, library_arch, load_artifact, save_artifact


@pytest.mark.parametrize(
    "target,arch,device",
    [("local-cpu", "x86-64", None), ("arm-a72", "aarch64", None), ("arm-a78", "aarch64", None), ("cuda-sm80", "x86-64", "cuda"), ("cuda-sm90", "x86-64", "cuda")],
)
def test_artifact_is_built_for_the_target_architecture(tmp_path, target, arch, device):
    profile = load_target(target)
    if profile.cross_compiler:
        assert shutil.which(profile.cross_compiler), f"{profile.cross_compiler} is missing (.ci/run installs gcc-aarch64-linux-gnu)"
    model, example = probe_model()
    compiled = compile_model(model, example, profile)
    files = save_artifact(compiled, tmp_path / target, profile)
    assert library_arch(files["library"]) == arch
    if device:  # GPU code rides inside the host library (compiled through NVRTC, no GPU needed)
        assert device in device_code_kinds(compiled)
    else:
        assert "cuda" not in device_code_kinds(compiled)


@pytest.mark.parametrize("target", ["cuda-sm80", "cuda-sm90"])
def test_w8a8_layers_build_for_a_gpu(target):
    """TVM 0.27's default CUDA pipeline sends int8 × int8 matmuls larger than 64 in every
    dimension to its int8 tensor-core rule, whose software pipelining fails the build; vitune
    schedules them itself (``schedule.UntensorizedInt8Matmul``), so a W8A8 candidate builds for
    a GPU. The model is the smallest that reaches that rule: 65 tokens, 128 wide."""
    import torch
    from timm.models.vision_transformer import VisionTransformer

    from vitune.compression.config import CompressionConfig, LinearConfig
    from vitune.compression.pipeline import compress_structural
    from vitune.models.layers import discover

    torch.manual_seed(0)
    model = VisionTransformer(img_size=32, patch_size=4, in_chans=1, num_classes=5, embed_dim=128, depth=1, num_heads=2, mlp_ratio=2.0).eval()
    example = torch.randn(1, 1, 32, 32)
    config = CompressionConfig.make({u.name: LinearConfig(precision="w8a8") for u in discover(model).linears})
    candidate = compress_structural(model, config)
    assert any(type(m).__name__ == "W8A8Linear" for m in candidate.modules())
    compiled = compile_model(candidate, example, load_target(target))
    assert "cuda" in device_code_kinds(compiled)


def test_local_artifact_loads_and_runs(tmp_path):
    import numpy as np

    from vitune.targets.runner import runner_for

    profile = load_target("local-cpu")
    model, example = probe_model()
    compiled = compile_model(model, example, profile)
    save_artifact(compiled, tmp_path / "a", profile)
    again = load_artifact(tmp_path / "a")
    got = runner_for(profile).run(again, example.numpy())
    np.testing.assert_allclose(got, model(example).detach().numpy(), atol=1e-4)


def test_missing_cross_compiler_is_named(tmp_path):
    from vitune.errors import ConfigError

    path = tmp_path / "board.toml"
    path.write_text(
        'name = "board"\n[tvm]\ntarget = { kind = "llvm", mtriple = "aarch64-linux-gnu" }\n'
        'cross_compiler = "no-such-gcc"\n[runner]\nkind = "rpc"\nhost = "127.0.0.1"\nport = 9\n'
    )
    profile = load_target(str(path))
    model, example = probe_model()
    with pytest.raises(ConfigError, match="cross compiler 'no-such-gcc' of target board was not found"):
        save_artifact(compile_model(model, example, profile), tmp_path / "x", profile)

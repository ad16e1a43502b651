"""Kernels reused from build to build in one process (vitune.targets.kernels)."""

import numpy as np
import pytest
import torch

from vitune.compression.config import CompressionConfig, LinearConfig
from vitune.compression.pipeline import compress
from vitune.models.layers import discover
from vitune.targets.compile import compile_model, load_artifact, save_artifact
from vitune.targets.kernels import KernelLibrary, reusable
from vitune.targets.runner import runner_for


def _candidates(tiny_vit, tiny_calib):
    layout = discover(tiny_vit)
    first, second = layout.linears[0].name, layout.linears[2].name
    return [
        compress(tiny_vit, CompressionConfig.make({first: LinearConfig("fp32", 8)}), calibration=tiny_calib),
        compress(tiny_vit, CompressionConfig.make({first: LinearConfig("fp32", 8), second: LinearConfig("int8", 8)}), calibration=tiny_calib),
    ]


def test_a_second_build_reuses_the_kernels_of_the_first_and_computes_the_same(tiny_vit, tiny_calib, fast_target, tmp_path, monkeypatch):
    import vitune.targets.kernels as kernels

    library = KernelLibrary()
    monkeypatch.setattr(kernels, "LIBRARY", library)
    x = torch.randn(1, 1, 8, 8)
    run = runner_for(fast_target).run
    models = _candidates(tiny_vit, tiny_calib)
    first = compile_model(models[0], x, fast_target, reuse_kernels=True)
    assert first.kernels is not None and first.kernels.reused == 0 and first.kernels.compiled == len(library) > 0
    again = compile_model(models[0], x, fast_target, reuse_kernels=True)
    assert again.kernels.reused == first.kernels.compiled and again.kernels.compiled == 0  # nothing generated twice
    other = compile_model(models[1], x, fast_target, reuse_kernels=True)
    assert other.kernels.reused > 0 and other.kernels.compiled > 0  # the shared blocks' kernels reused, the int8 layer's new
    for model, built in ((models[0], first), (models[0], again), (models[1], other)):
        plain = compile_model(model, x, fast_target)
        assert plain.kernels is None
        # the same machine code: the outputs are equal bit for bit
        np.testing.assert_array_equal(run(built, x.numpy()), run(plain, x.numpy()))
    # what ships is one library, linked again from the same code; it loads in a process that never built it
    save_artifact(other, tmp_path / "art", fast_target)
    loaded = load_artifact(tmp_path / "art")
    np.testing.assert_array_equal(runner_for(fast_target).run(loaded, x.numpy()), run(other, x.numpy()))
    assert other.shipped().kernels is None and first.shipped() is not first
    plain_build = compile_model(models[1], x, fast_target)
    assert plain_build.shipped() is plain_build


def test_a_hash_collision_is_built_anew_not_reused(tiny_vit, tiny_calib, fast_target, monkeypatch):
    """Kernels are named by a hash of their TIR; a library kernel of the same name whose TIR
    differs is compiled again, never called in its place."""
    import vitune.targets.kernels as kernels

    library = KernelLibrary()
    monkeypatch.setattr(kernels, "LIBRARY", library)
    monkeypatch.setattr(kernels, "_content_name", lambda func: f"vk_{len(str(func.params))}")  # a weak hash: collisions
    x = torch.randn(1, 1, 8, 8)
    models = _candidates(tiny_vit, tiny_calib)
    built = compile_model(models[1], x, fast_target, reuse_kernels=True)
    assert built.kernels is None  # colliding kernels inside one build: relax.build's own path
    np.testing.assert_array_equal(runner_for(fast_target).run(built, x.numpy()), runner_for(fast_target).run(compile_model(models[1], x, fast_target), x.numpy()))


def test_the_library_drops_the_least_recently_used_past_its_capacity(tiny_vit, tiny_calib, fast_target, monkeypatch):
    import vitune.targets.kernels as kernels

    library = KernelLibrary(capacity=3)
    monkeypatch.setattr(kernels, "LIBRARY", library)
    x = torch.randn(1, 1, 8, 8)
    model = _candidates(tiny_vit, tiny_calib)[0]
    built = compile_model(model, x, fast_target, reuse_kernels=True)
    assert built.kernels.compiled > 3 and len(library) == 3
    # the dropped kernels live on in the build that imports them
    np.testing.assert_array_equal(runner_for(fast_target).run(built, x.numpy()), runner_for(fast_target).run(compile_model(model, x, fast_target), x.numpy()))


def test_kernels_compiled_for_one_target_are_not_reused_for_another(tiny_vit, fast_target, monkeypatch):
    from dataclasses import replace

    import vitune.targets.kernels as kernels

    library = KernelLibrary()
    monkeypatch.setattr(kernels, "LIBRARY", library)
    x = torch.randn(1, 1, 8, 8)
    first = compile_model(tiny_vit, x, fast_target, reuse_kernels=True)
    other = replace(fast_target, tvm_target={**fast_target.tvm_target, "mcpu": "x86-64"})  # another CPU model, same machine
    second = compile_model(tiny_vit, x, other, reuse_kernels=True)
    assert second.kernels.reused == 0 and second.kernels.compiled == first.kernels.compiled
    assert compile_model(tiny_vit, x, other, reuse_kernels=True).kernels.reused == first.kernels.compiled


@pytest.mark.parametrize("target, expected", [("local-cpu", True), ("cuda-sm90", False), ("arm-a72", False)])
def test_only_cpu_builds_run_in_this_process_reuse_kernels(target, expected):
    from vitune.targets import load_target

    assert reusable(load_target(target)) is expected

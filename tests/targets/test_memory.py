"""The memory a build needs: its plan against known answers and against the runtime's heap."""

import pytest
import torch
from torch import nn

from vitune.targets.compile import compile_model, load_artifact, save_artifact
from vitune.targets.memory import PAGE, heap_in_use, runtime_heap_bytes
from vitune.targets.measure import measure

pytestmark = pytest.mark.skipif(heap_in_use() is None, reason="needs glibc's mallinfo2 to read the heap")


def test_the_plan_of_a_known_model(fast_target):
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).eval()
    compiled = compile_model(model, torch.randn(1, 16), fast_target)
    plan = compiled.memory
    assert plan.weights_bytes == (16 * 32 + 32 + 32 * 8 + 8) * 4
    assert plan.io_bytes == 16 * 4
    # a storage for the output (1 x 8) and one at least for the hidden activations (1 x 32), at
    # most one per intermediate tensor; each is a whole page of the VM's pooled allocator
    assert 2 <= plan.storages <= 4 and plan.activations_bytes == plan.storages * PAGE
    assert plan.peak_bytes == plan.weights_bytes + plan.activations_bytes + plan.io_bytes


def _check_against_the_heap(compiled, fast_target, tolerance=0.10):
    plan = compiled.memory
    measured = runtime_heap_bytes(compiled, fast_target)
    assert measured is not None
    assert abs(measured - plan.peak_bytes) <= tolerance * plan.peak_bytes, (measured, plan.to_dict())


def test_the_default_models_plan_matches_the_runtime(default_workspace, fast_target):
    compiled = compile_model(default_workspace.model.eval(), default_workspace.example_input(1), fast_target)
    _check_against_the_heap(compiled, fast_target)


def test_a_measurement_and_an_artifact_carry_the_plan(tiny_vit, fast_target, tmp_path):
    x = torch.randn(1, 1, 8, 8)
    out: list = []
    m = measure(tiny_vit, x, fast_target, compiled_out=out)
    assert m.ok, m.error
    assert m.peak_memory_bytes == out[0].memory.peak_bytes > sum(p.nbytes for p in out[0].params)
    save_artifact(out[0], tmp_path, fast_target)
    import json

    meta = json.loads((tmp_path / "artifact.json").read_text())
    assert meta["memory"]["peak_bytes"] == m.peak_memory_bytes
    assert load_artifact(tmp_path).memory is None  # a loaded artifact carries its plan in artifact.json only


@pytest.mark.slow
def test_deit_tinys_plan_matches_the_runtime(fast_target):
    import timm

    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False).eval()
    compiled = compile_model(model, torch.randn(1, 3, 224, 224), fast_target)
    assert compiled.memory.weights_bytes == sum(p.numel() * 4 for p in model.parameters())  # fp32 parameters, no buffers
    _check_against_the_heap(compiled, fast_target)


def test_a_target_refuses_a_candidate_that_does_not_fit_its_memory(default_workspace, tmp_path):
    """[hardware] memory_gb is a hard limit: a candidate whose build needs more fails with the
    reason, and one that fits goes through."""
    from tests.conftest import FAST_TARGET
    from vitune.compression.config import CompressionConfig
    from vitune.costmodels import get_latency_source
    from vitune.search.evaluate import Evaluator
    from vitune.targets import load_target

    def evaluator(memory_gb: float) -> Evaluator:
        path = tmp_path / f"board-{memory_gb}.toml"
        path.write_text(FAST_TARGET.replace('name = "test-cpu"', f'name = "board-{memory_gb}"') + f"[hardware]\nmemory_gb = {memory_gb}\n")
        profile = load_target(str(path))
        return Evaluator(default_workspace, profile, get_latency_source("measured", profile))

    small = evaluator(0.0001)  # 105 kB: the default model's weights alone are 0.8 MB
    result = small.evaluate(CompressionConfig.identity())
    assert not result.ok and "exceeds target board-0.0001's [hardware] memory_gb = 0.0001" in result.error
    assert result.metrics.peak_memory_bytes > 0.0001 * 2**30
    assert evaluator(1.0).evaluate(CompressionConfig.identity()).ok

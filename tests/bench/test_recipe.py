"""bench/recipe.py: the study files it writes are real study files, and its output error is relative."""

import pytest

from tests.bench import load_bench
from vitune.compression.methods import CompressionMethods
from vitune.search.studyfile import load_study_file


@pytest.fixture(scope="module")
def recipe():
    return load_bench("recipe")


@pytest.mark.parametrize("method", ["svd", "aa", "aa-residual", "aa-residual+als", "aa-residual+adam"])
def test_each_method_gets_a_study_file_vitune_reads(recipe, method, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    path = tmp_path / f"recipe-{method}.toml"
    path.write_text(recipe.study_text("deit_base_patch16_224", images, method, 64, 50, "tune", 8, 600.0))
    spec = load_study_file(path)
    lowrank, _, solver = method.partition("+")
    assert spec.methods.lowrank == lowrank and spec.methods.refine_solver == (solver or CompressionMethods().refine_solver)
    assert spec.methods.calib_images == 64 and spec.methods.refine_steps == 50
    assert spec.model.name == "deit_base_patch16_224" and not spec.model.pretrained
    assert spec.target.tuning == "tune" and spec.target.tuning_trials == 8 and spec.target.tuning_budget_s == 600.0


def test_output_error_is_relative_to_the_original(recipe, tiny_vit):
    import copy

    import torch
    from torch.utils.data import TensorDataset

    data = TensorDataset(torch.randn(6, 1, 8, 8), torch.zeros(6, dtype=torch.long))
    assert recipe.rel_error(tiny_vit, tiny_vit, data, 6) == {"features": 0.0, "logits": 0.0}
    scaled = copy.deepcopy(tiny_vit)
    with torch.no_grad():
        scaled.head.weight.mul_(1.5)
        scaled.head.bias.mul_(1.5)
    err = recipe.rel_error(scaled, tiny_vit, data, 6)
    assert err["features"] == 0.0 and err["logits"] == pytest.approx(0.5, rel=1e-5)

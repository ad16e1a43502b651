"""bench/scale.py: the study files it writes are real study files, and its split adds up."""

import pytest

from tests.bench import load_bench
from vitune.search.studyfile import load_study_file


@pytest.fixture(scope="module")
def scale():
    return load_bench("scale")


@pytest.mark.parametrize("name", ["digits_vit_base", "deit_tiny", "deit_small", "deit_base"])
def test_each_model_gets_a_study_file_vitune_reads(scale, name, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    path = tmp_path / f"{name}.toml"
    path.write_text(scale.study_text(name, images, "database"))
    spec = load_study_file(path)
    assert spec.target.latency == "measured" and spec.target.tuning == "database"
    assert spec.search.min_fidelity == 0 and set(spec.space.distill_steps) == {0, 10}  # all four families
    assert {"fp32", "int8", "w8a8"} <= set(spec.space.precision) and len(spec.space.rank_fraction) > 1
    if name in scale.TIMM:
        assert spec.model.source == "timm" and spec.model.name == scale.TIMM[name] and not spec.model.pretrained
        assert dict(spec.data.fractions)["val"] == scale.FRACTIONS["val"]


def test_a_trials_split_adds_up_to_its_wall_time(scale):
    timings = {"compress_s": 2.0, "fidelity_s": 0.5, "accuracy_s": 1.0, "export_s": 0.5, "build_s": 1.5, "prepack_s": 0.2,
               "codegen_s": 0.3, "tune_s": 0.0, "run_s": 0.4, "lock_wait_s": 0.0}
    split = scale.split_of(timings, 7.0)
    assert split["compress"] == 2.5 and split["build"] == 2.5 and split["timing"] == 0.4
    assert sum(split.values()) == pytest.approx(7.0) and split["overhead"] == pytest.approx(0.6)

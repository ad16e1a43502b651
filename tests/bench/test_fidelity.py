"""The ranking-fidelity bench's sampling and agreement figures (bench/fidelity.py)."""

import pytest

from tests.bench import load_bench
from vitune.models.default import build_digits_vit
from vitune.models.layers import discover
from vitune.search.space import SearchSpace
from vitune.search.studyfile import SpaceSpec

@pytest.fixture(scope="module")
def fidelity():
    return load_bench("fidelity")


def test_sampled_configurations_start_uncompressed_are_distinct_and_repeatable(fidelity):
    space = SearchSpace.build(SpaceSpec(precision=("fp32", "int8"), rank_fraction=(1.0, 0.5)), discover(build_digits_vit()))
    configs = fidelity.sample_configs(space, 12, seed=3)
    assert len(configs) == 12
    assert configs[0].is_identity and not any(c.is_identity for c in configs[1:])
    assert len({c.key for c in configs}) == 12
    assert [c.key for c in fidelity.sample_configs(space, 12, seed=3)] == [c.key for c in configs]
    assert [c.key for c in fidelity.sample_configs(space, 12, seed=4)] != [c.key for c in configs]


def test_agreement_figures(fidelity):
    shipped = [1.0, 2.0, 3.0, 4.0]
    same = fidelity.agreement([1.1, 2.2, 3.3, 4.4], shipped)
    assert same["spearman"] == pytest.approx(1.0) and same["kendall"] == pytest.approx(1.0)
    assert same["mape"] == pytest.approx(0.1) and same["fastest_agrees"] is True
    reversed_ = fidelity.agreement([4.0, 3.0, 2.0, 1.0], shipped)
    assert reversed_["spearman"] == pytest.approx(-1.0) and reversed_["fastest_agrees"] is False
    # a failed measurement (None) is left out of the pairs, not counted as zero
    partial = fidelity.agreement([1.0, None, 3.0, 4.0], shipped)
    assert partial["n"] == 3 and partial["mape"] == pytest.approx(0.0)
    assert fidelity.agreement([1.0, None], [1.0, 2.0])["spearman"] is None


def test_rank_agreement_across_models_is_the_worst_models_not_a_pooled_one(fidelity):
    """Pooled, a 1 ms model and a 30 ms model rank each other perfectly whatever each proxy does
    inside a model; across models the figure is the worst model's."""
    def model(recorded, shipped):
        rows = [{"recorded_ms": {"untuned": r}, "shipped_ms": s} for r, s in zip(recorded, shipped)]
        return {"rows": rows, "proxies": {"untuned": fidelity.agreement(recorded, shipped)}}

    small = model([1.0, 2.0, 3.0], [0.3, 0.2, 0.1])  # reversed inside the model
    large = model([30.0, 40.0, 50.0], [10.0, 20.0, 30.0])
    out = fidelity.across_models([small, large], "untuned")
    assert out["spearman"] == pytest.approx(-1.0) and out["fastest_agrees"] is False and out["models"] == 2 and out["n"] == 6
    assert out["mape"] == pytest.approx(sum([0.7 / 0.3, 1.8 / 0.2, 2.9 / 0.1, 2.0, 1.0, 20 / 30]) / 6)

"""The solver bench's variants and candidates (bench/solvers.py)."""

import pytest

from tests.bench import load_bench
from vitune.compression.methods import CompressionMethods
from vitune.models.default import build_digits_vit
from vitune.models.layers import discover
from vitune.search.space import SearchSpace
from vitune.search.studyfile import SpaceSpec


@pytest.fixture(scope="module")
def solvers():
    return load_bench("solvers")


@pytest.mark.parametrize(("variant", "solver", "steps", "lr"), [
    ("none-0", "adam", 0, 0.05), ("adam-50", "adam", 50, 0.05), ("adam-50-0.002", "adam", 50, 0.002), ("als-25", "als", 25, 0.05),
])
def test_a_variant_names_its_solver_and_steps(solvers, variant, solver, steps, lr):
    methods = solvers.variant_methods(CompressionMethods(lowrank="svd"), variant, 32)
    assert (methods.lowrank, methods.refine_solver, methods.refine_steps, methods.refine_lr, methods.calib_images) == ("aa-residual", solver, steps, lr, 32)


@pytest.mark.parametrize("variant", ["lbfgs-10", "als", "adam-x"])
def test_an_unknown_variant_is_refused(solvers, variant):
    with pytest.raises(SystemExit, match="none-0, adam-N"):
        solvers.variant_methods(CompressionMethods(), variant, 32)


def test_low_rank_only_candidates_keep_their_ranks_alone(solvers):
    space = SearchSpace.build(SpaceSpec(precision=("fp32", "int8"), rank_fraction=(1.0, 0.5), prune_heads=(0.0, 0.34), distill_steps=(0, 10)),
                              discover(build_digits_vit()))
    mixed = solvers.candidates(space, 6, seed=1, lowrank_only=False)
    alone = solvers.candidates(space, 6, seed=1, lowrank_only=True)
    assert all(c.distill_steps == 0 for c in mixed + alone)
    assert any(spec.precision != "fp32" for c in mixed for _, spec in c.linear_items)
    for m, a in zip(mixed, alone):
        assert {n: s.rank for n, s in m.linear_items if s.rank} == {n: s.rank for n, s in a.linear_items}
        assert all(s.precision == "fp32" for _, s in a.linear_items) and not a.prune_heads_items and not a.prune_mlp_items

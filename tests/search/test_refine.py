"""Front refinement (vitune/search/refine.py): neighbours along the sweep's sensitivity order."""

import optuna
import pytest
from optuna.distributions import CategoricalDistribution

from tests.search.test_warmstart import synthetic_sweep
from vitune.models.default import build_digits_vit
from vitune.models.layers import discover
from vitune.search import warmstart
from vitune.search.records import METRICS_ATTR, Metrics
from vitune.search.refine import REFINE_ORIGIN, Refiner, refine_after
from vitune.search.space import SearchSpace
from vitune.search.studyfile import SpaceSpec


@pytest.fixture(scope="module")
def space():
    spec = SpaceSpec(precision=("fp32", "int8"), rank_fraction=(1.0, 0.5, 0.25), prune_heads=(0.0,), prune_mlp=(0.0,), distill_steps=(0,))
    return SearchSpace.build(spec, discover(build_digits_vit()))


def test_the_neighbours_of_a_walk_step_are_the_steps_beside_it(space):
    sweep = synthetic_sweep(space)
    walk = [p for _, p in warmstart.latency_walk(space, sweep)]
    refiner = Refiner(space, sweep)
    identity = space.identity_params()
    assert len(walk) > 4
    for k in range(1, len(walk) - 1):
        assert refiner.faster(walk[k]) == walk[k + 1]
        assert refiner.more_accurate(walk[k]) == walk[k - 1]
    assert refiner.faster(identity) == walk[0] and refiner.more_accurate(walk[0]) == identity
    assert refiner.faster(walk[-1]) is None and refiner.more_accurate(identity) is None
    assert [which for _, which in refiner.neighbours(walk[3])] == ["faster", "more accurate"]


def test_a_layer_gives_back_its_option_to_the_one_it_held_before(space):
    # rank 0.25 on a layer is more sensitive than 0.5 there: given back, the layer returns to 0.5
    refiner = Refiner(space, synthetic_sweep(space))
    name = next(n for n, m in space.choices if n.endswith("rank_fraction") and 0.25 in m)
    params = {**space.identity_params(), name: 0.25}
    assert refiner.more_accurate(params) == {**params, name: 0.5}


def _study(space, points):
    """A Pareto study (accuracy up, latency down) holding ``points``: (params, accuracy, ms)."""
    study = optuna.create_study(directions=["maximize", "minimize"])
    dists = {n: CategoricalDistribution(list(m)) for n, m in space.choices}
    for params, acc, ms in points:
        study.add_trial(optuna.trial.create_trial(params=params, distributions={n: dists[n] for n in params}, values=[acc, ms],
                                                  user_attrs={METRICS_ATTR: Metrics(accuracy=acc, latency_ms=ms).to_dict()}))
    return study


def test_a_new_front_member_gets_its_neighbours_enqueued_once_within_the_limit(space):
    sweep = synthetic_sweep(space)
    walk = [p for _, p in warmstart.latency_walk(space, sweep)]
    refiner = Refiner(space, sweep)
    study = _study(space, [(space.identity_params(), 0.98, 1.0), (walk[3], 0.97, 0.6), (walk[8], 0.90, 0.9)])
    on_front, dominated = study.trials[1], study.trials[2]
    assert refine_after(study, dominated, refiner, limit=10) == 0  # not on the front: nothing
    assert refine_after(study, on_front, refiner, limit=10) == 2
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert [t.system_attrs["fixed_params"] for t in waiting] == [walk[4], walk[2]]
    assert [t.user_attrs["origin"] for t in waiting] == [f"{REFINE_ORIGIN}: faster than trial 1", f"{REFINE_ORIGIN}: more accurate than trial 1"]
    assert refine_after(study, on_front, refiner, limit=10) == 0  # the study holds them already

    study = _study(space, [(walk[3], 0.97, 0.6), (walk[10], 0.95, 0.4)])
    assert refine_after(study, study.trials[0], refiner, limit=3) == 2
    assert refine_after(study, study.trials[1], refiner, limit=3) == 1  # the limit counts every refinement trial
    assert refine_after(study, study.trials[1], refiner, limit=3) == 0

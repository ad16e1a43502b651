"""The front-breeding sampler on a synthetic, deterministic problem (no model, no build).

Sixteen "layers", each with a menu of four options: option k saves latency and costs accuracy
with per-layer sensitivities, so good configurations compress the insensitive layers hard and
leave the sensitive ones alone. Trials that cannot join the front are stopped (PRUNED) as vitune's
evaluator stops them.
"""

import numpy as np
import optuna
import pytest

from vitune.search.evolution import PARENT_KEY, EvolutionSampler
from vitune.search.front import dominated, front, hypervolume

LAYERS, OPTIONS = 16, [1.0, 0.5, 0.25, 0.125]
SENSITIVITY = np.random.default_rng(7).gamma(0.6, 0.02, size=LAYERS)
SAVING = np.random.default_rng(8).uniform(0.5, 1.5, size=LAYERS)


def score(params: dict) -> tuple[float, float]:
    level = np.array([OPTIONS.index(params[f"l{i}"]) for i in range(LAYERS)])
    accuracy = 0.98 - float(np.sum(SENSITIVITY * level**1.5))
    latency = 2.0 - float(np.sum(SAVING * (1 - np.array(OPTIONS)[level]))) / LAYERS * 1.6
    return accuracy, latency


def study_with(sampler, mode="pareto", budget_ms=None):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    directions = ["maximize", "minimize"] if mode == "pareto" else ["maximize"]
    study = optuna.create_study(directions=directions, sampler=sampler)
    study.set_user_attr("vitune", {"mode": mode, "budget_ms": budget_ms})

    def objective(trial):
        params = {f"l{i}": trial.suggest_categorical(f"l{i}", OPTIONS) for i in range(LAYERS)}
        acc, lat = score(params)
        trial.set_user_attr("config_key", repr(sorted(params.items())))
        points = [(t.user_attrs["metrics"]["accuracy"], t.user_attrs["metrics"]["latency_ms"]) for t in front(study)]
        if mode == "pareto" and dominated(acc, lat, points):
            raise optuna.TrialPruned("dominated")
        if mode == "constrained":
            trial.set_constraint("latency_ms", lat - budget_ms)
        trial.set_user_attr("metrics", {"accuracy": acc, "latency_ms": lat})
        return (acc, lat) if mode == "pareto" else acc

    study.enqueue_trial({f"l{i}": 1.0 for i in range(LAYERS)})
    return study, objective


def run(sampler, n=120, **kw):
    study, objective = study_with(sampler, **kw)
    study.optimize(objective, n_trials=n)
    return study


def test_children_come_from_the_front_and_no_configuration_is_tried_twice():
    study, objective = study_with(EvolutionSampler(seed=0))
    study.optimize(objective, n_trials=20)
    study.enqueue_trial({f"l{i}": 0.5 for i in range(LAYERS)})  # enqueued once there is a front to breed from
    study.optimize(objective, n_trials=60)
    trials = study.get_trials(deepcopy=False)
    keys = [tuple(sorted(t.params.items())) for t in trials]
    assert len(set(keys)) == len(keys)
    children = [t for t in trials if PARENT_KEY in t.system_attrs]
    assert len(children) > 40  # most trials are bred once the front has two members
    enqueued = [t for t in trials if "fixed_params" in t.system_attrs]
    assert enqueued and not any(PARENT_KEY in t.system_attrs for t in enqueued)
    by_number = {t.number: t for t in trials}
    for child in children:
        parent = by_number[child.system_attrs[PARENT_KEY]]
        assert parent.state == optuna.trial.TrialState.COMPLETE
        changed = sum(parent.params[n] != v for n, v in child.params.items())
        assert 1 <= changed <= 3


def test_it_finds_a_better_front_than_random_and_nsga2_when_most_trials_are_stopped():
    def hv(study):
        pts = [(t.user_attrs["metrics"]["accuracy"], t.user_attrs["metrics"]["latency_ms"]) for t in front(study)]
        return hypervolume(pts, 0.8, 2.0)

    evo = [hv(run(EvolutionSampler(seed=s))) for s in range(3)]
    rand = [hv(run(optuna.samplers.RandomSampler(seed=s))) for s in range(3)]
    nsga = [hv(run(optuna.samplers.NSGAIISampler(population_size=25, seed=s))) for s in range(3)]
    assert np.mean(evo) > 1.1 * np.mean(rand) and np.mean(evo) > 1.1 * np.mean(nsga), (evo, rand, nsga)


def test_parents_whose_children_are_stopped_are_chosen_less():
    study = run(EvolutionSampler(seed=1), n=60)
    parents = front(study)
    weights = EvolutionSampler._weights(study, parents)
    stopped = {p.number: 0 for p in parents}
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.PRUNED,)):
        if t.system_attrs.get(PARENT_KEY) in stopped:
            stopped[t.system_attrs[PARENT_KEY]] += 1
    counts = np.array([stopped[p.number] for p in parents])
    assert counts.max() > counts.min()
    assert weights[counts.argmax()] < weights[counts.argmin()]


def test_constrained_studies_breed_within_the_budget():
    study = run(EvolutionSampler(seed=0), n=60, mode="constrained", budget_ms=1.3)
    feasible = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                if t.user_attrs["metrics"]["latency_ms"] <= 1.3]
    bred = [t for t in study.trials if PARENT_KEY in t.system_attrs]
    assert feasible and bred
    best_random = max((t.value for t in run(optuna.samplers.RandomSampler(seed=0), n=60, mode="constrained", budget_ms=1.3).trials
                       if t.user_attrs["metrics"]["latency_ms"] <= 1.3), default=0.0)
    assert max(t.value for t in feasible) >= best_random


@pytest.mark.parametrize("bad", [{"explore": 1.5}, {"p_neighbour": -0.1}])
def test_probabilities_are_checked(bad):
    with pytest.raises(ValueError, match="probabilities"):
        EvolutionSampler(**bad)

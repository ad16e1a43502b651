"""``sampler = "evolution"``: breed each candidate from the study's current front.

Why not NSGA-II alone: vitune stops dominated candidates early (:mod:`vitune.search.evaluate`),
so most trials end PRUNED, and Optuna's NSGA-II moves to its next generation only once
``population_size`` trials have COMPLETED. In the 100-trial bench 17 of vitune's trials completed
against a population of 25: NSGA-II never left its first, random, generation. This sampler learns
from every trial:

* **parents** are the study's front (:func:`vitune.search.front.front`, the non-dominated
  complete trials) in a Pareto study; in a constrained one, the five most accurate complete
  trials within the budget and the two closest over it;
* a **child** copies its parent and moves 1, 2 or 3 parameters (probabilities 0.5, 0.3, 0.2),
  each to a neighbouring option of its menu (the next rank, the next precision, ...) with
  probability ``p_neighbour``, else to any other option;
* a parent whose children were **stopped early or failed** is chosen less often (weight
  ``1 / (1 + such children)``): the stopped trials steer the search away from dead ends;
* a child that was **already tried** (any state, any worker) is drawn again (up to 32 times), so
  the trial budget is not spent on results the cache already has;
* a share ``explore`` of the trials, and every trial until the front has ``min_parents``
  members, is drawn uniformly at random (Optuna's RandomSampler, seeded).

A child records its parent's trial number as the system attribute ``vitune:parent``. Works the
same in Pareto and constrained studies, with one worker or many (all state is in the storage).
"""

from __future__ import annotations

import numpy as np
from optuna.distributions import CategoricalDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.search_space import IntersectionSearchSpace
from optuna.trial import TrialState

PARENT_KEY = "vitune:parent"
_MUTATIONS = (1, 2, 3)
_MUTATION_P = (0.5, 0.3, 0.2)


class EvolutionSampler(BaseSampler):
    def __init__(self, seed: int | None = None, explore: float = 0.15, p_neighbour: float = 0.75, min_parents: int = 2):
        if not 0.0 <= explore <= 1.0 or not 0.0 <= p_neighbour <= 1.0:
            raise ValueError("explore and p_neighbour are probabilities (0 to 1)")
        self._rng = np.random.default_rng(seed)
        self._random = RandomSampler(seed=seed)
        self._space = IntersectionSearchSpace(include_pruned=True)
        self.explore, self.p_neighbour, self.min_parents = explore, p_neighbour, min_parents

    def reseed_rng(self) -> None:
        self._rng = np.random.default_rng()
        self._random.reseed_rng()

    # -- Optuna's sampler interface -------------------------------------------------------------
    def infer_relative_search_space(self, study, trial) -> dict:
        return {n: d for n, d in self._space.calculate(study).items() if isinstance(d, CategoricalDistribution) and len(d.choices) > 1}

    def sample_relative(self, study, trial, search_space) -> dict:
        if not search_space or trial.system_attrs.get("fixed_params") or self._rng.random() < self.explore:
            return {}  # nothing to breed, an enqueued trial (warm start), or an exploring one
        parents = self._parents(study)
        if len(parents) < self.min_parents:
            return {}
        weights = self._weights(study, parents)
        tried = self._tried(study, search_space)
        child = None
        for _ in range(32):
            parent = parents[self._rng.choice(len(parents), p=weights)]
            if not set(search_space) <= set(parent.params):
                continue
            candidate = self._mutate({n: parent.params[n] for n in search_space}, search_space)
            if self._key(candidate, search_space) not in tried:
                child = candidate
                break
        if child is None:  # the neighbourhood of the front is exhausted: explore instead
            return {}
        study._storage.set_trial_system_attr(trial._trial_id, PARENT_KEY, parent.number)
        return child

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._random.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial) -> None:
        self._random.before_trial(study, trial)

    def after_trial(self, study, trial, state, values) -> None:
        self._random.after_trial(study, trial, state, values)

    # -- breeding ------------------------------------------------------------------------------
    def _parents(self, study) -> list:
        from vitune.search.budgets import relative_excess
        from vitune.search.front import accuracy_of, complete_trials, front, study_budgets, target_names, within_budget
        from vitune.search.records import metrics_of

        budgets = study_budgets(study)
        if not budgets:
            return front(study)
        targets = target_names(study)

        # constrained: the most accurate within the budgets, and the ones just over them (a step
        # from a feasible configuration that keeps more accuracy)
        trials = complete_trials(study)
        feasible = sorted((t for t in trials if within_budget(t, budgets, targets)), key=lambda t: -accuracy_of(t))[:5]
        over = sorted((t for t in trials if not within_budget(t, budgets, targets)),
                      key=lambda t: relative_excess(budgets, metrics_of(t), targets))[:2]
        return feasible + over

    @staticmethod
    def _weights(study, parents) -> np.ndarray:
        bad = {t.number: 0 for t in parents}
        for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED, TrialState.FAIL)):
            p = t.system_attrs.get(PARENT_KEY)
            if p in bad:
                bad[p] += 1
        w = np.array([1.0 / (1.0 + bad[t.number]) for t in parents])
        return w / w.sum()

    @staticmethod
    def _key(params: dict, search_space) -> tuple:
        return tuple(repr(params.get(n)) for n in sorted(search_space))

    def _tried(self, study, search_space) -> set:
        return {self._key(t.params, search_space) for t in study.get_trials(deepcopy=False) if t.params}

    def _mutate(self, params: dict, search_space) -> dict:
        names = sorted(search_space)
        k = min(len(names), int(self._rng.choice(_MUTATIONS, p=_MUTATION_P)))
        child = dict(params)
        for name in self._rng.choice(names, size=k, replace=False):
            choices = list(search_space[name].choices)
            i = choices.index(child[name]) if child[name] in choices else 0
            if self._rng.random() < self.p_neighbour:
                steps = [j for j in (i - 1, i + 1) if 0 <= j < len(choices)]
            else:
                steps = [j for j in range(len(choices)) if j != i]
            child[name] = choices[int(self._rng.choice(steps))]
        return child


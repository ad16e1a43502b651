"""The Optuna objective and samplers of a vitune study.

One trial: sample a configuration; wait for its turn (no configuration is evaluated twice, see
:mod:`vitune.search.coordination`) or reuse the earlier result; evaluate it; record. Every trial
stores, as user attributes, its configuration (``config``), its hash (``config_key``), a short
``summary``, all ``metrics``, the time split (``timings``), the ``worker`` that ran it and a
``heartbeat``; a failed trial stores ``error``, a trial stopped early ``pruned`` (the reason,
recorded by Optuna as PRUNED), a reused one ``cached_from``.

Objectives: a Pareto study returns (accuracy, *costs), the costs of its ``[search] objectives``
(:class:`~vitune.search.objectives.Objectives`: by default latency_ms on each target, the primary
first; the model's size and peak memory when asked); a constrained study returns accuracy, and its samplers see one constraint per budget (see
:mod:`vitune.search.budgets`: ``latency_ms``, ``model_mb``, ``peak_mb``, with ``@<target>`` on the
other targets; feasible when all are ≤ 0), set on each trial whose figures are known.
"""

from __future__ import annotations

import time
import warnings

from vitune.errors import ConfigError
from vitune.search.coordination import Heartbeat, wait_for_turn
from vitune.search.budgets import Budget, excess, fits
from vitune.search.front import accuracy_of, complete_trials
from vitune.search.objectives import Objectives
from vitune.search.records import METRICS_ATTR, PARTIAL_ATTR, Metrics, metrics_of


class CandidateFailed(Exception):
    """Raised inside the objective so Optuna records the trial as FAIL; the study goes on."""


def directions(mode: str, objectives: Objectives = Objectives()) -> list[str]:
    """Accuracy up, and in a Pareto study each of its costs down."""
    return objectives.directions() if mode == "pareto" else ["maximize"]


def make_sampler(name: str, seed: int, n_trials: int):
    """Samplers read a constrained study's constraint from each trial (``Trial.set_constraint``)."""
    import optuna

    with warnings.catch_warnings():  # multivariate, group, constant_liar are "experimental"
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "nsga2":
            population = max(8, min(50, n_trials // 4))
            return optuna.samplers.NSGAIISampler(population_size=population, seed=seed)
        if name == "tpe":
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True)
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if name == "evolution":
            from vitune.search.evolution import EvolutionSampler

            return EvolutionSampler(seed=seed)
    raise ConfigError(f"unknown sampler {name!r}")


class Objective:
    """``budgets``: one :class:`~vitune.search.budgets.Budget` per target of ``targets``, the
    primary first."""

    def __init__(self, space, evaluator, study, mode: str = "pareto", budgets: tuple = (Budget(),), targets: tuple = ("",), log=None,
                 objectives: Objectives | None = None):
        self.space, self.evaluator, self.study = space, evaluator, study
        self.mode, self.budgets, self.targets = mode, tuple(budgets), tuple(targets)
        self.objectives = objectives or Objectives(targets=self.targets)
        self.log = log or (lambda msg: None)

    def _constrain(self, trial, metrics: Metrics) -> None:
        if self.mode != "constrained":
            return
        for name, value in excess(self.budgets, metrics, self.targets).items():
            trial.set_constraint(name, float(value))

    def _values(self, metrics: Metrics):
        if self.mode == "pareto":
            return (metrics.accuracy, *self.objectives.costs_of(metrics))
        return metrics.accuracy

    def _front_points(self) -> list:
        """What a new candidate must escape: the complete trials' (accuracy, costs) (a
        constrained study: the best accuracy within every budget, at any cost)."""
        trials = complete_trials(self.study)
        if self.mode == "pareto":
            return [(accuracy_of(t), self.objectives.costs_of(metrics_of(t))) for t in trials]
        feasible = [accuracy_of(t) for t in trials if fits(self.budgets, metrics_of(t), self.targets)]
        return [(max(feasible), (0.0,) * len(self.objectives.names()[1:]))] if feasible else []

    def _finish(self, trial, metrics: Metrics | None, error: str | None = None, pruned: str | None = None):
        """Record a trial's outcome: return its objective values, or raise so Optuna records it as
        failed (``error``) or pruned (``pruned``, stopped early); partial metrics are kept apart."""
        import optuna

        if metrics is not None and metrics != Metrics():
            trial.set_user_attr(PARTIAL_ATTR if error or pruned else METRICS_ATTR, metrics.to_dict())
            self._constrain(trial, metrics)
        if error:
            trial.set_user_attr("error", error)
            raise CandidateFailed(error)
        if pruned:
            trial.set_user_attr("pruned", pruned)
            raise optuna.TrialPruned(pruned)
        return self._values(metrics)

    def __call__(self, trial):
        beat = Heartbeat(self.study, trial._trial_id)
        start = time.perf_counter()
        own: dict[str, float] = {}  # the objective's own stages, beside the evaluator's (see records.time_split)

        def lap(stage: str, t0: float) -> float:
            now = time.perf_counter()
            own[stage] = now - t0
            return now

        try:
            t = time.perf_counter()
            config = self.space.suggest(trial)
            trial.set_user_attr("config", config.to_json())
            trial.set_user_attr("summary", config.summary())
            trial.set_user_attr("config_key", config.key)  # last: announces the choice (see wait_for_turn)
            t = lap("suggest_s", t)
            previous = wait_for_turn(self.study, trial.number, config.key, self.log)
            t = lap("wait_s", t)
            if previous is not None:
                trial.set_user_attr("cached_from", previous.number)
                trial.set_user_attr("timings", {**_rounded(own), "trial_s": round(time.perf_counter() - start, 4)})
                state, attrs = previous.state.name, previous.user_attrs
                return self._finish(trial, Metrics.from_dict(attrs[METRICS_ATTR]) if state == "COMPLETE" else None,
                                    attrs["error"] if state == "FAIL" else None, attrs["pruned"] if state == "PRUNED" else None)
            front = self._front_points()
            t = lap("front_s", t)
            result = self.evaluator.evaluate(config, front)
            trial.set_user_attr("timings", {**_rounded(result.timings), **_rounded(own), "trial_s": round(time.perf_counter() - start, 4)})
            return self._finish(trial, result.metrics, result.error, result.pruned)
        finally:
            beat.stop()


def _rounded(timings: dict) -> dict:
    return {k: round(v, 4) for k, v in timings.items()}

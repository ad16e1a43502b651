"""What a Pareto study minimises beside accuracy: latency, the model's stored size, the build's
peak run-time memory, in any combination (``[search] objectives``).

``objectives = ["accuracy", "latency_ms", "model_mb"]`` makes a three-objective study: accuracy
up, latency and the model's size down. The Optuna objective values, the front's dominance and
early stopping all read one cost vector, :meth:`Objectives.costs_of`, in this order: the latency
on each target (the primary first), the model's size, the peak memory on each target. Names, as
optuna-dashboard shows them: ``latency_ms``, ``model_mb``, ``peak_mb``, with ``@<target>`` on the
other targets of a multi-target study. Sizes are MiB (``budget_model_mb`` counts the same).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from vitune.targets.memory import MIB

COSTS = ("latency_ms", "model_mb", "peak_mb")  # what a study may minimise, in cost-vector order
DEFAULT = ("accuracy", "latency_ms")
PER_TARGET = ("latency_ms", "peak_mb")  # one value per target; model_mb is the same on every target


@dataclass(frozen=True)
class Objectives:
    """The costs a Pareto study minimises (a subset of :data:`COSTS`, in that order) on
    ``targets`` (the primary first)."""

    costs: tuple[str, ...] = ("latency_ms",)
    targets: tuple[str, ...] = ("",)

    @classmethod
    def from_names(cls, names, targets=("",)) -> "Objectives":
        """From ``[search] objectives`` as the study file reader checked it (accuracy first)."""
        return cls(tuple(c for c in COSTS if c in names), tuple(targets))

    def names(self) -> list[str]:
        """Every objective's name, accuracy first, as Optuna stores them."""
        out = ["accuracy"]
        for cost in self.costs:
            if cost in PER_TARGET:
                out += [cost if i == 0 else f"{cost}@{t}" for i, t in enumerate(self.targets)]
            else:
                out.append(cost)
        return out

    def directions(self) -> list[str]:
        return ["maximize"] + ["minimize"] * (len(self.names()) - 1)

    @property
    def memory(self) -> bool:
        """Whether the study minimises a memory figure."""
        return any(c != "latency_ms" for c in self.costs)

    def costs_of(self, metrics) -> tuple[float, ...]:
        """The cost vector of ``metrics`` (a :class:`~vitune.search.records.Metrics`); a figure
        that was not recorded is infinite (dominated by every known one)."""
        out: list[float] = []
        lats = metrics.latencies
        for cost in self.costs:
            if cost == "latency_ms":
                out += [lats[i] if i < len(lats) and lats[i] is not None else math.inf for i in range(len(self.targets))]
            elif cost == "model_mb":
                out.append(metrics.size_bytes / MIB if metrics.size_bytes is not None else math.inf)
            else:
                for i, t in enumerate(self.targets):
                    peak = metrics.peak_memory_bytes if i == 0 else metrics.peak_on(t)
                    out.append(peak / MIB if peak is not None else math.inf)
        return tuple(out)

    def text(self, costs: tuple[float, ...]) -> str:
        """``costs`` (from :meth:`costs_of`) as a reader wants them: '0.1234 ms, model 0.21 MiB'."""
        parts = []
        for name, value in zip(self.names()[1:], costs):
            cost, _, at = name.partition("@")
            where = f" on {at}" if at else ""
            if cost == "latency_ms":
                parts.append(f"{value:.4f} ms{where}")
            else:
                parts.append(f"{'model' if cost == 'model_mb' else 'peak'} {value:.4g} MiB{where}")
        return ", ".join(parts)

    def to_meta(self) -> list[str]:
        return ["accuracy", *self.costs]


def study_objectives(study) -> Objectives:
    """The objectives ``study`` was created with (its ``vitune`` metadata; latency alone in a
    study from before memory objectives)."""
    meta = study.user_attrs.get("vitune", {})
    targets = (meta.get("target", ""), *(t["name"] for t in meta.get("also", [])))
    return Objectives.from_names(meta.get("objectives", DEFAULT), targets)

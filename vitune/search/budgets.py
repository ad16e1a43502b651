"""A constrained study's budgets, per target: latency (ms), the model's size and the build's peak
run-time memory (MiB, as ``[hardware] memory_gb`` counts GiB).

A budget of None does not constrain. The model's size is what it ships (``Metrics.size_bytes``:
every stored tensor at its stored dtype, the same on every target); peak memory is each target's
build at batch 1 (``Metrics.peak_on``). Constraint values follow Optuna's convention: feasible
when every value is ≤ 0. The study stores the budgets in its metadata (``to_meta`` /
``from_meta``), so the front, export and the report read the budgets the study ran under.
"""

from __future__ import annotations

from dataclasses import dataclass

from vitune.targets.memory import MIB

UNKNOWN = 1e9  # how far a figure that was not recorded is over its budget (Optuna needs a number)
META_KEYS = ("budget_ms", "budget_model_mb", "budget_peak_mb")


@dataclass(frozen=True)
class Budget:
    latency_ms: float | None = None
    model_mb: float | None = None
    peak_mb: float | None = None

    @property
    def any(self) -> bool:
        return any(v is not None for v in (self.latency_ms, self.model_mb, self.peak_mb))

    @classmethod
    def from_spec(cls, target) -> "Budget":
        """From a study file's ``[target]`` / ``[[target.also]]`` (0 = none)."""
        return cls(target.budget_ms or None, target.budget_model_mb or None, target.budget_peak_mb or None)

    @classmethod
    def from_meta(cls, meta: dict) -> "Budget":
        return cls(*(meta.get(k) for k in META_KEYS))

    def to_meta(self) -> dict:
        return dict(zip(META_KEYS, (self.latency_ms, self.model_mb, self.peak_mb)))

    def limits(self, index: int, target: str) -> dict[str, float]:
        """Constraint name → budget, for each budget set on target number ``index`` (0: the
        primary). Names: ``latency_ms``, ``model_mb``, ``peak_mb``, with ``@<target>`` on the
        other targets."""
        at = "" if index == 0 else f"@{target}"
        named = (("latency_ms", self.latency_ms), ("model_mb", self.model_mb), ("peak_mb", self.peak_mb))
        return {f"{name}{at}": b for name, b in named if b is not None}

    def excess(self, metrics, index: int, target: str) -> dict[str, float]:
        """Constraint name (as :meth:`limits`) → how far ``metrics`` on target number ``index`` is
        over that budget (≤ 0: within)."""
        lats = metrics.latencies
        peak = metrics.peak_on(target) if index else metrics.peak_memory_bytes
        figures = {
            "latency_ms": lats[index] if index < len(lats) else None,
            "model_mb": metrics.size_bytes / MIB if metrics.size_bytes is not None else None,
            "peak_mb": peak / MIB if peak is not None else None,
        }
        out: dict[str, float] = {}
        for name, limit in self.limits(index, target).items():
            figure = figures[name.split("@", 1)[0]]
            out[name] = figure - limit if figure is not None else UNKNOWN
        return out

    def text(self) -> str:
        parts = [f"{self.latency_ms:.10g} ms" if self.latency_ms is not None else "",  # as written: 1 ms, 12.345678 ms
                 f"model {self.model_mb:.10g} MiB" if self.model_mb is not None else "",
                 f"peak {self.peak_mb:.10g} MiB" if self.peak_mb is not None else ""]
        return ", ".join(p for p in parts if p)


def excess(budgets, metrics, targets) -> dict[str, float]:
    """Every constraint of ``budgets`` (one per target, the primary first) on ``metrics``."""
    out: dict[str, float] = {}
    for i, (budget, target) in enumerate(zip(budgets, targets)):
        out.update(budget.excess(metrics, i, target))
    return out


def fits(budgets, metrics, targets) -> bool:
    return all(v <= 0 for v in excess(budgets, metrics, targets).values())


def relative_excess(budgets, metrics, targets) -> float:
    """How far over its budgets ``metrics`` is, each excess as a share of its budget, summed (0:
    within every budget)."""
    limits: dict[str, float] = {}
    for i, (budget, target) in enumerate(zip(budgets, targets)):
        limits.update(budget.limits(i, target))
    return sum(max(0.0, v) / limits[name] for name, v in excess(budgets, metrics, targets).items() if limits[name] > 0)


def budgets_text(budgets, targets) -> str:
    return "; ".join(f"{b.text()} on {t}" for b, t in zip(budgets, targets) if b.any)

"""What a trial measured, as one typed, immutable record, and the one reader of it from a study.

The evaluator fills a :class:`Metrics` as a candidate goes through its stages; the objective
stores it on the Optuna trial (``user_attrs["metrics"]`` for a complete trial,
``user_attrs["partial_metrics"]`` for one that failed or was stopped early) with
:meth:`Metrics.to_dict`; the front, ``study show``, the reports and export read it back with
:func:`metrics_of`. No other module spells these keys.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Any, Mapping

METRICS_ATTR = "metrics"  # trial user attribute: a complete trial's Metrics.to_dict()
PARTIAL_ATTR = "partial_metrics"  # ... of a trial that failed or was stopped early


@dataclass(frozen=True)
class Metrics:
    """A candidate's figures; None (or empty) where a stage did not run."""

    accuracy: float | None = None  # validated accuracy (the search's split), complete trials only
    latency_ms: float | None = None  # on the primary target
    latencies_ms: tuple[tuple[str, float], ...] = ()  # (target, ms), the primary first; () in a one-target study
    latency_source: str = "measured"  # "measured" or the cost model's name
    latency_spread_ms: float | None = None
    latency_samples_ms: tuple[float, ...] = ()
    latency_drift: float | None = None  # how slow the machine ran when timed (latency_ms is corrected for it)
    latency_attempts: int | None = None  # times it was timed around the drift reference (1 + retries for slow windows)
    params: int | None = None
    size_bytes: int | None = None  # the stored model: every tensor at its stored dtype (a tuned CPU build holds weight-only int8 at fp32)
    peak_memory_bytes: int | None = None  # the primary target's build: weights + planned storages + input, one batch-1 run
    peaks_bytes: tuple[tuple[str, int], ...] = ()  # (target, bytes), the primary first; () in a one-target study
    fidelity: float | None = None  # top-1 agreement with the uncompressed model on calibration images
    partial_accuracy: float | None = None  # a candidate stopped while its accuracy was read in shards:
    accuracy_seen: int | None = None  # ... the images read so far
    accuracy_bound: float | None = None  # ... and the best accuracy it could still have reached
    cached: bool = False  # accuracy and latency both came from the results cache

    @property
    def latencies(self) -> tuple[float, ...]:
        """Latency on each target, the primary first (() when none is known)."""
        if self.latencies_ms:
            return tuple(ms for _, ms in self.latencies_ms)
        return (self.latency_ms,) if self.latency_ms is not None else ()

    @property
    def targets(self) -> tuple[str, ...]:
        """The targets of :attr:`latencies_ms` (() in a one-target study)."""
        return tuple(name for name, _ in self.latencies_ms)

    def latency_on(self, target: str) -> float | None:
        return dict(self.latencies_ms).get(target)

    def peak_on(self, target: str) -> int | None:
        """Peak memory of ``target``'s build, as a multi-target trial records it (the primary's is
        also :attr:`peak_memory_bytes`)."""
        return dict(self.peaks_bytes).get(target)

    def with_(self, **changes: Any) -> "Metrics":
        return dataclasses.replace(self, **changes)

    def merged(self, other: "Metrics") -> "Metrics":
        """These figures with every figure ``other`` has (its non-default fields) taking over."""
        return dataclasses.replace(self, **{f.name: getattr(other, f.name) for f in fields(other)
                                           if getattr(other, f.name) != f.default})

    def to_dict(self) -> dict[str, Any]:
        """The stored form: only the figures that were taken."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value == f.default and f.name != "latency_source":
                continue
            if f.name in ("latencies_ms", "peaks_bytes"):
                value = dict(value)
            elif f.name == "latency_samples_ms":
                value = list(value)
            out[f.name] = value
        if self.latency_ms is None:
            out.pop("latency_source", None)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "Metrics":
        """The one reader of stored figures (keys this version does not know are ignored: a study
        written by a newer vitune still reads)."""
        data = data or {}
        if not isinstance(data, Mapping):
            raise ValueError(f"trial metrics: expected a mapping, got {type(data).__name__}")
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in data or data[f.name] is None:
                continue
            value = data[f.name]
            if f.name == "latencies_ms":
                value = tuple((str(k), float(v)) for k, v in dict(value).items())
            elif f.name == "peaks_bytes":
                value = tuple((str(k), int(v)) for k, v in dict(value).items())
            elif f.name == "latency_samples_ms":
                value = tuple(float(v) for v in value)
            elif f.name in ("params", "size_bytes", "peak_memory_bytes", "accuracy_seen", "latency_attempts"):
                value = int(value)
            elif f.name in ("latency_source",):
                value = str(value)
            elif f.name == "cached":
                value = bool(value)
            else:
                value = float(value)
            values[f.name] = value
        return cls(**values)


def has_metrics(trial) -> bool:
    """Whether a trial recorded complete figures (it finished every stage)."""
    return METRICS_ATTR in trial.user_attrs


def metrics_of(trial) -> Metrics:
    """A trial's figures: complete, else partial; for a study written before vitune recorded
    figures, accuracy and latency from the trial's objective values."""
    attrs = trial.user_attrs
    metrics = Metrics.from_dict(attrs.get(METRICS_ATTR) or attrs.get(PARTIAL_ATTR))
    values = list(trial.values or [])
    if metrics.accuracy is None and values:
        metrics = metrics.with_(accuracy=float(values[0]))
    if metrics.latency_ms is None and len(values) > 1:
        metrics = metrics.with_(latency_ms=float(values[1]))
    return metrics


def accuracy_of(trial) -> float:
    acc = metrics_of(trial).accuracy
    return acc if acc is not None else math.nan


def latency_of(trial) -> float:
    lat = metrics_of(trial).latency_ms
    return lat if lat is not None else math.nan


def latencies_of(trial) -> tuple[float, ...]:
    """Latency on each of the study's targets, the primary first (one value for a one-target study)."""
    return metrics_of(trial).latencies or (latency_of(trial),)


# A trial's time split (``user_attrs["timings"]``, seconds): the stages :func:`time_split` shows,
# each of which is the sum of the finer ones beside it (export_s, build_s, tune_s, prepack_s, codegen_s, run_s
# are inside latency_s)
TIME_STAGES = (
    ("suggest_s", "sample"),  # the sampler's choices, recorded on the trial
    ("wait_s", "wait"),  # for another worker evaluating the same configuration
    ("front_s", "front"),  # reading the completed trials that early stopping must beat
    ("compress_s", "compress"),
    ("fidelity_s", "fidelity"),
    ("latency_s", "latency"),  # export, build (with tuning), code generation and timing runs, on the primary target
    ("accuracy_s", "accuracy"),
    ("lock_wait_s", "lock wait"),  # for the host lock (another worker timing on this machine)
)


def time_split(timings: list[dict], wall_s: float | None = None) -> str:
    """One line: the mean seconds per trial of each stage over the trials' ``timings``, what is
    left of a trial's own time (``trial_s``) as "other", and, given the run's ``wall_s``, what the
    trials leave of it (the sampler's relative step and storage between trials). Means, so the
    parts add up to the trial's time and to the wall time per trial; the median trial beside."""
    import statistics

    rows = [t for t in timings if t.get("trial_s")]
    if not rows:
        return "no trial timed"

    def mean(values) -> float:
        return sum(values) / len(rows)

    parts = []
    for key, label in TIME_STAGES:
        value = mean(t.get(key, 0.0) + sum(v for k, v in t.items() if k.startswith(f"{key}@")) for t in rows)
        if value:
            parts.append(f"{label} {value:.2f}")
    named = [sum(t.get(k, 0.0) for k, _ in TIME_STAGES) + sum(v for k, v in t.items() if "_s@" in k) for t in rows]
    trial = mean(t["trial_s"] for t in rows)
    parts.append(f"other {trial - mean(named):.2f}")
    line = (f"seconds per trial (mean of {len(rows)}): " + ", ".join(parts) + f" = {trial:.2f} in the trial "
            f"(median {statistics.median(t['trial_s'] for t in rows):.2f})")
    if wall_s is not None:
        per = wall_s / len(rows)
        line += f" + {per - trial:.2f} between trials (sampler, storage) = {per:.2f} of wall time"
    beside = mean(t.get("accuracy_beside_s", 0.0) for t in rows)
    if beside:  # vitune.search.overlap: on the cores the build left, inside the latency stage's time
        line += f"; accuracy read beside the build {beside:.2f} (not added: it ran during latency)"
    return line


__all__ = ["METRICS_ATTR", "PARTIAL_ATTR", "TIME_STAGES", "Metrics", "time_split", "accuracy_of", "has_metrics", "latencies_of", "latency_of", "metrics_of"]

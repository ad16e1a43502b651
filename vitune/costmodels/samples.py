"""Training and evaluation data of cost models: random candidates measured on a target.

A :class:`CostContext` is what a cost model is about: one original model (and its input shape),
one target profile and tuning mode, the search space candidates are drawn from. It builds
*structural* candidates: latency depends only on shapes and dtypes, never on weight values, so
they are compressed with the fastest method of each kind (plain SVD, magnitude pruning, min-max
scales, no distillation) — same layers, same shapes, a fraction of the time.

A :class:`Sample` is one measured candidate: its configuration, its workloads' signature keys
(the features are rebuilt from the kernel cache), its blocks' keys (for the block table), and the
measured latency. :class:`SampleStore` appends samples to a JSON-lines file per (target, tuning,
model), so measurements are never lost and every later fit reuses them.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitune.costmodels.workloads import KernelCache, model_workloads, structure_hash


def model_key(model: nn.Module, example: torch.Tensor) -> str:
    """A structural hash of a model and its input shape (weights do not matter for latency)."""
    return structure_hash(f"{list(example.shape)}{example.dtype}", model.named_modules(), 12)


def target_dir(profile) -> Path:
    """Where a target's cost-model files live: its tuning database's key plus its timing
    protocol's (latencies timed another way are other numbers: they are never mixed)."""
    import hashlib

    from vitune.paths import cache_dir
    from vitune.targets.tuning import database_dir

    protocol = hashlib.sha256(json.dumps(profile.timing_key()["protocol"], sort_keys=True).encode()).hexdigest()[:8]
    return cache_dir() / "costmodels" / f"{database_dir(profile).name}-{protocol}"


@dataclass(frozen=True)
class Sample:
    config: str  # CompressionConfig JSON
    config_key: str
    workloads: tuple[str, ...]  # KernelCache keys, in call order
    blocks: tuple[str, ...]  # BlockTable keys: the frame first, then every block
    latency_ms: float
    spread_ms: float
    measure_s: float  # what measuring it cost (compile + run)
    seed: int = -1  # the draw it came from (-1: a study's re-measurement)
    # workloads whose schedule a later tuning can still change (built untuned, or from a shipped
    # seed that the machine's own record would override); -1: not recorded (an older sample)
    unsettled: int = -1
    database: str = ""  # the tuning database's version when it was measured (targets.tuning.database_version)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "Sample":
        data = json.loads(text)
        return cls(**{**data, "workloads": tuple(data["workloads"]), "blocks": tuple(data["blocks"])})


class SampleStore:
    """Append-only JSON lines; a torn last line (a killed writer) is skipped on read. ``current``
    (optional) says whether a sample still holds: :meth:`load` leaves the others out and counts
    them in :attr:`stale`."""

    def __init__(self, path: Path, current: Callable[[Sample], bool] | None = None):
        self.path = Path(path)
        self.current = current
        self.stale = 0

    def load(self) -> list[Sample]:
        self.stale = 0
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                sample = Sample.from_json(line)
            except (json.JSONDecodeError, TypeError, KeyError):
                continue
            if self.current is not None and not self.current(sample):
                self.stale += 1
                continue
            out.append(sample)
        return out

    def append(self, sample: Sample) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, (sample.to_json() + "\n").encode())
        finally:
            os.close(fd)


@dataclass
class CostContext:
    """One model on one target: builds structural candidates and measures them."""

    profile: Any  # a vitune.targets TargetProfile
    model: nn.Module
    example: torch.Tensor
    space: Any  # vitune.search.space.SearchSpace
    tuning: str = "off"  # off | database | tune
    kernels: KernelCache = field(default_factory=KernelCache)
    rounds: int = 3  # interleaved timing rounds when several candidates are measured together
    batch: int = 8  # configurations built, then timed together, when samples are collected
    _tuner: Any = None

    @property
    def key(self) -> str:
        if not hasattr(self, "_key"):
            self._key = model_key(self.model, self.example)
        return self._key

    @property
    def directory(self) -> Path:
        return target_dir(self.profile)

    def store(self, folder: str = "samples") -> SampleStore:
        """The samples of this model and tuning mode (``folder``: ``samples``, or ``heldout`` for
        the configurations a fit never sees), those measured on another state of the tuning
        database left out (:meth:`current`)."""
        return SampleStore(self.directory / folder / f"{self.key}-{self.tuning}.jsonl", current=self.current)

    def database_version(self) -> str:
        from vitune.targets.tuning import database_version

        return "" if self.tuning == "off" else database_version(self.profile)

    def current(self, sample: Sample) -> bool:
        """Whether ``sample``'s latency is what its configuration would measure now: always for
        untuned builds (they read no records) and for builds whose every kernel had this
        machine's own tuned record; otherwise only while the database is as it was (a workload
        that ran untuned may have been tuned since, e.g. by ``vitune tune --cover``)."""
        return self.is_current(sample.unsettled, sample.database)

    def is_current(self, unsettled: int, database: str) -> bool:
        """The rule of :meth:`current` for any measurement that recorded its ``unsettled``
        workloads and the ``database`` version it was measured on (a sample, a block's entry)."""
        return self.tuning == "off" or unsettled == 0 or database == self.database_version()

    def unsettled(self, m) -> int:
        """How many of a measurement's kernels a later tuning can still change (-1: unknown)."""
        if self.tuning == "off":
            return 0
        t = m.timings
        return int(t["untuned_workloads"] + t.get("seeded_workloads", 0)) if "untuned_workloads" in t else -1

    @property
    def tuner(self):
        if self.tuning != "off" and self._tuner is None:
            from vitune.targets.tuning import Tuner

            self._tuner = Tuner(self.profile, self.tuning)
        return self._tuner

    def random_configs(self, n: int, seed: int, exclude: Collection[str] = frozenset()):
        """``n`` distinct configurations drawn uniformly from the space (keys in ``exclude`` skipped;
        no distillation: it does not change a build)."""
        return self.space.random_configs(n, seed, exclude, fixed={"distill_steps": 0})

    def build(self, config) -> nn.Module:
        """The structural candidate of ``config`` (same shapes and dtypes as the real one)."""
        from vitune.compression.pipeline import compress_structural

        return compress_structural(self.model, config)

    def workload_keys(self, candidate: nn.Module) -> tuple[str, ...]:
        return tuple(self.kernels.key_of(w) for w in model_workloads(candidate, self.example))

    def measure(self, config, seed: int = -1) -> tuple[Sample | None, str | None]:
        """Build, lower (features) and measure one configuration: ``(sample, None)`` or ``(None, error)``."""
        return self.measure_configs([config], seed)[0]

    def measure_configs(self, configs, seed: int = -1) -> list[tuple[Sample | None, str | None]]:
        """:meth:`measure` for several configurations, timed together (interleaved rounds)."""
        return [(s, m.error) for s, m in self.measure_candidates([self.build(c) for c in configs], configs, seed)]

    def measure_candidates(self, candidates: list[nn.Module], configs, seed: int = -1) -> list:
        """Lower and measure ``candidates`` (built from ``configs``) together, in :attr:`rounds`
        interleaved timing rounds: ``[(sample or None, Measurement)]`` in order."""
        from vitune.costmodels.lut import parts
        from vitune.targets.measure import measure_many

        workloads = [self.workload_keys(c) for c in candidates]
        version = self.database_version()  # before this batch's builds (which may tune): a sample that
        # ran untuned kernels and was measured across a change reads as stale, never as current
        measured = measure_many(candidates, [self.example] * len(candidates), self.profile, tuner=self.tuner, rounds=self.rounds)
        out = []
        for candidate, config, keys, m in zip(candidates, configs, workloads, measured):
            if not m.ok:
                out.append((None, m))
                continue
            blocks = tuple(p.key for p in parts(candidate, self.example))
            spent = sum(v for k, v in m.timings.items() if k.endswith("_s"))  # export, build, tune, codegen, run
            out.append((Sample(config.to_json(), config.key, keys, blocks, m.latency_ms, m.spread_ms or 0.0, spent, seed,
                               self.unsettled(m), version), m))
        return out

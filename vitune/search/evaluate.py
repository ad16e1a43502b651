"""Evaluate one candidate configuration: compress → fidelity screen → latency → validated accuracy.

``Evaluator.evaluate(config, front)`` never raises (except ``KeyboardInterrupt``): a candidate
that fails to compress, compile or run returns a :class:`CandidateResult` whose ``error`` names
the stage and the reason, and the study records the trial as failed with that reason.

Early stopping, the same for every sampler and for Pareto and constrained studies alike (it
needs no Optuna pruner, which multi-objective studies lack):

* **fidelity screen** — top-1 agreement with the uncompressed model on calibration images (no
  labels, no validation data); below ``min_fidelity`` the candidate is stopped before any build;
* **sharded accuracy** — validated accuracy is read in ``accuracy_shards`` parts; once even a
  perfect remainder could not lift the candidate out of the region dominated by ``front`` (the
  completed trials' (accuracy, latency) points) it is stopped.

A stopped candidate comes back with ``pruned`` set to the reason (its partial metrics kept).
Accuracy and measured latency are read from and written to a :class:`ResultCache` when given.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from vitune.compression.config import CompressionConfig
from vitune.errors import VituneError, short_reason
from vitune.search.front import dominated
from vitune.search.records import Metrics
from vitune.targets.measure import host_hold
from vitune.targets.memory import over_limit


@dataclass
class CandidateResult:
    metrics: Metrics = field(default_factory=Metrics)  # filled stage by stage
    timings: dict = field(default_factory=dict)  # compress_s (distill_s inside it), fidelity_s, accuracy_s (accuracy_beside_s apart), export_s, build_s, run_s, lock_wait_s
    error: str | None = None
    pruned: str | None = None  # why the candidate was stopped early (not a failure)

    @property
    def ok(self) -> bool:
        return self.error is None and self.pruned is None


@dataclass(frozen=True)
class MoreTarget:
    """One more target of a multi-target study: its latency is read after the primary's."""

    name: str
    source: Any  # a vitune.costmodels LatencySource for this target
    cache: Any = None  # a ResultCache keyed by this target (measured latency), or None
    local: bool = False  # measured on this machine: timing takes the host lock exclusively


@dataclass(frozen=True)
class EarlyStop:
    min_fidelity: float = 0.0  # 0 = no screen
    fidelity_images: int = 256
    accuracy_shards: int = 1  # 1 = read the split in one go


# Accuracy is read beside the build (``overlap="auto"``) once a reading is known to take longer
# than this: a small model's many tiny operators each wait for the interpreter lock the build's
# Python holds, so beside the build they gain nothing and slowed the build (tests/search/
# test_study.py on the default model: 146 s against 129 s with every reading beside)
BESIDE_MIN_S = 1.0


class Evaluator:
    """Holds what every trial needs: the original model, the splits, the latency source."""

    def __init__(self, workspace, profile, latency_source, split: str = "val", early: EarlyStop = EarlyStop(),
                 cache=None, host_lock=None, more: tuple[MoreTarget, ...] = (), objectives=None, overlap: bool | str = "auto"):
        self.more = tuple(more)  # the other targets of a multi-target study
        self.objectives = objectives  # a vitune.search.objectives.Objectives: the costs early stopping compares
        self.workspace = workspace
        self.profile = profile
        self.latency_source = latency_source
        self.split = split
        self.early = early
        self.cache = cache  # a vitune.search.cache.ResultCache, or None
        self.host_lock = host_lock  # a vitune.search.coordination.HostLock when timing runs on this machine
        self.example = workspace.example_input(1)
        self._calibrations: dict = {}
        self._reference: Any = None  # the uncompressed model's predictions on calib
        # with keep_builds, the primary target's build of each measured configuration (key →
        # CompiledModel), for the study's closing side-by-side timing; retain() bounds them
        self.keep_builds = False
        self.builds: dict[str, Any] = {}
        # validated accuracy read beside the build (vitune.search.overlap) where a build happens
        # and PyTorch has more than one thread: always (True), never (False), or "auto": once a
        # reading in full is known to take BESIDE_MIN_S or more (the first trial reads as before)
        if overlap not in (True, False, "auto"):
            raise ValueError(f"Evaluator overlap must be True, False or 'auto', not {overlap!r}")
        self.overlap = overlap
        self._reading_s_per_image: float | None = None  # measured on the last reading after the build

    def retain(self, keys) -> None:
        """Keep the builds of the configurations ``keys`` only (e.g. the front's)."""
        keep = set(keys)
        self.builds = {k: v for k, v in self.builds.items() if k in keep}

    def calibration(self, images: int):
        """The calibration batch (calib split), built once per size and reused by every trial."""
        from vitune.compression.calibrate import Calibration

        if images not in self._calibrations:
            self._calibrations[images] = Calibration.from_dataset(self.workspace.data.calib, images)
        return self._calibrations[images]

    def compress(self, config: CompressionConfig, report: dict | None = None):
        from vitune.compression.pipeline import compress

        calib = self.calibration(config.methods.calib_images)
        return compress(self.workspace.model, config, train_data=self.workspace.data.train, calibration=calib, report=report)

    def fidelity(self, model) -> float:
        """Top-1 agreement with the uncompressed model on the first calibration images."""
        from vitune.data.splits import predictions

        calib, n = self.workspace.data.calib, self.early.fidelity_images
        if self._reference is None:
            self._reference = predictions(self.workspace.model, calib, n)
        return float((predictions(model, calib, n) == self._reference).float().mean())

    @contextlib.contextmanager
    def _lock(self, exclusive: bool, result: CandidateResult):
        """The host lock (shared, or exclusive while timing on this machine); the time spent
        waiting for it goes to ``lock_wait_s``, never into a stage's own time."""
        if self.host_lock is None:
            yield
            return
        t0 = time.perf_counter()
        with self.host_lock.exclusive() if exclusive else self.host_lock.shared():
            result.timings["lock_wait_s"] = result.timings.get("lock_wait_s", 0.0) + time.perf_counter() - t0
            yield

    def evaluate(self, config: CompressionConfig, front=()) -> CandidateResult:
        result = CandidateResult()
        cached_acc, cached_lat = self.cache.lookup(config.key) if self.cache else (None, None)
        if not self.latency_source.measures:
            cached_lat = None  # predicted latencies change with every refit: never cached
        if cached_acc and cached_lat:
            self._latency(None, config, cached_lat, result)  # no model needed: both results are known
            if self._more_latencies(None, config, result):
                result.metrics = result.metrics.merged(cached_acc).with_(cached=True)
            return result
        # With the accuracy known, a prediction reads only the candidate's shapes and dtypes: its
        # structural build (no refinement, no distillation, activation scales from one image)
        # predicts the same latency at a fraction of the compression's cost.
        structural = bool(cached_acc) and not self.latency_source.measures
        stage = "compress"
        try:
            with self._lock(False, result):
                t0 = time.perf_counter()
                report: dict = {}
                if structural:
                    from vitune.compression.pipeline import compress_structural

                    model = compress_structural(self.workspace.model, config)
                else:
                    model = self.compress(config, report)
                result.timings["compress_s"] = time.perf_counter() - t0
                if "distill_s" in report:  # inside compress_s
                    result.timings["distill_s"] = report["distill_s"]
                if self.early.min_fidelity > 0 and not cached_acc:
                    stage = "fidelity"
                    t0 = time.perf_counter()
                    fid = self.fidelity(model)
                    result.metrics = result.metrics.with_(fidelity=fid)
                    result.timings["fidelity_s"] = time.perf_counter() - t0
                    if fid < self.early.min_fidelity:
                        result.pruned = f"fidelity {fid:.3f} < {self.early.min_fidelity} (top-1 agreement with the uncompressed model on calib)"
                        return result
        except VituneError as err:
            result.error = f"{stage} failed: {err}"
            return result
        except Exception as err:  # any other failure of a candidate is recorded, not raised
            result.error = f"{stage} failed: {short_reason(err)}"
            return result
        background = self._beside(model, cached_acc, cached_lat)
        try:
            if not self._latency(model, config, cached_lat, result, background) or not self._more_latencies(model, config, result, background):
                return result
            if cached_acc:
                result.metrics = result.metrics.merged(cached_acc)
                if structural:  # the accuracy from the cache, the latency predicted again as ever
                    result.metrics = result.metrics.with_(cached=True)
                return result
            try:
                self._accuracy(model, config, front, result, background)
            except Exception as err:
                result.error = f"accuracy failed: {short_reason(err)}"
            return result
        finally:
            if background is not None:
                background.cancel()  # a candidate that failed or was stopped: its reading stops too

    def _beside(self, model, cached_acc, cached_lat):
        """A :class:`~vitune.search.overlap.BackgroundAccuracy` reading ``model``'s accuracy
        while its latency stage builds it; None where nothing is built or one core is all there is."""
        import torch

        if self.overlap is False or cached_acc or cached_lat or not self.latency_source.measures or torch.get_num_threads() < 2:
            return None
        data = self.workspace.data.get(self.split)
        if self.overlap == "auto" and (self._reading_s_per_image is None or self._reading_s_per_image * len(data) < BESIDE_MIN_S):
            return None
        from vitune.search.overlap import BackgroundAccuracy

        return BackgroundAccuracy(model, data, self.early.accuracy_shards,
                                  host_shared=self.host_lock.shared if self.host_lock is not None else None)

    def _hold(self, result: CandidateResult, background, local: bool = True):
        """The host lock for :func:`~vitune.targets.measure.host_hold`: builds shared, timing
        exclusive (on this machine: ``local``); the background accuracy stops at the first timing."""

        def hold(exclusive: bool):
            if exclusive and local and background is not None:
                background.stop_for_timing()  # until its finish(): nothing but timing runs follows the build
            return self._lock(exclusive and local, result)

        return hold

    def _latency(self, model, config, cached, result: CandidateResult, background=None) -> bool:
        if cached:
            result.metrics = result.metrics.merged(cached)
            return self._fits(cached.peak_memory_bytes, self.profile, result)
        with host_hold(self._hold(result, background)):  # build shared, time alone
            t0 = time.perf_counter()
            built: list | None = [] if self.keep_builds else None
            m = self.latency_source.latency(model, config, self.example, built)
            result.timings.update(m.timings, latency_s=time.perf_counter() - t0)
        if not m.ok:
            result.error = m.error
            return False
        if built:
            self.builds[config.key] = built[-1]
        if self.cache and m.source == "measured":
            self.cache.put_latency(config.key, m)
        result.metrics = result.metrics.with_(latency_ms=m.latency_ms, latency_spread_ms=m.spread_ms,
                                              latency_samples_ms=tuple(m.samples_ms), latency_source=m.source,
                                              peak_memory_bytes=m.peak_memory_bytes, latency_drift=m.drift,
                                              latency_attempts=m.attempts)
        return self._fits(m.peak_memory_bytes, self.profile, result)

    @staticmethod
    def _fits(peak_bytes, profile, result: CandidateResult) -> bool:
        """A build that needs more memory than the target has fails, with the reason."""
        why = over_limit(peak_bytes, profile)
        if why:
            result.error = why
        return why is None

    def _more_latencies(self, model, config, result: CandidateResult, background=None) -> bool:
        """Latency on every other target (``latencies_ms``: target → ms, the primary first)."""
        if not self.more:
            return True
        latencies = {self.profile.name: result.metrics.latency_ms}
        peaks = {self.profile.name: result.metrics.peak_memory_bytes}
        for target in self.more:
            cached = target.cache.lookup(config.key)[1] if target.cache is not None and target.source.measures else None
            if cached:
                if not self._fits(cached.peak_memory_bytes, target.source.profile, result):
                    return False
                latencies[target.name] = cached.latency_ms
                peaks[target.name] = cached.peak_memory_bytes
                continue
            if model is None:  # every result so far came from the cache
                try:
                    with self._lock(False, result):
                        model = self.compress(config)
                except Exception as err:
                    result.error = f"compress failed: {short_reason(err)}"
                    return False
            with host_hold(self._hold(result, background, target.local)):  # a remote device times alone there
                t0 = time.perf_counter()
                m = target.source.latency(model, config, self.example)
                result.timings[f"latency_s@{target.name}"] = time.perf_counter() - t0
            if not m.ok:
                result.error = f"latency on {target.name} failed: {m.error}"
                return False
            if target.cache is not None and m.source == "measured":
                target.cache.put_latency(config.key, m)
            if not self._fits(m.peak_memory_bytes, target.source.profile, result):
                return False
            latencies[target.name] = m.latency_ms
            peaks[target.name] = m.peak_memory_bytes
        result.metrics = result.metrics.with_(latencies_ms=tuple(latencies.items()),
                                              peaks_bytes=tuple((k, v) for k, v in peaks.items() if v is not None))
        return True

    def _accuracy(self, model, config, front, result: CandidateResult, background=None) -> None:
        from vitune.compression.stats import model_stats
        from vitune.data.splits import accuracy_in_shards

        params, size = model_stats(model)  # before accuracy: the model's size may be an objective
        result.metrics = result.metrics.with_(params=params, size_bytes=size)
        mine = self.objectives.costs_of(result.metrics) if self.objectives else result.metrics.latencies
        where = self.objectives.text(mine) if self.objectives else f"{result.metrics.latency_ms:.4f} ms"
        front = list(front)
        hopeless = (lambda best_possible: dominated(best_possible, mine, front)) if front else None
        if background is not None:  # what is left, on every core (the thread holds the host lock)
            t0 = time.perf_counter()
            acc, seen, best = background.finish(hopeless)
            result.timings["accuracy_s"] = time.perf_counter() - t0  # the wait: the trial's wall time
            result.timings["accuracy_beside_s"] = background.beside_s  # read beside the build (not in the wall time)
        else:
            with self._lock(False, result):
                t0 = time.perf_counter()
                acc, seen, best = accuracy_in_shards(model, self.workspace.data.get(self.split), self.early.accuracy_shards, hopeless=hopeless)
                result.timings["accuracy_s"] = time.perf_counter() - t0
            if seen:
                self._reading_s_per_image = result.timings["accuracy_s"] / seen
        total = len(self.workspace.data.get(self.split))
        if seen < total:
            result.metrics = result.metrics.with_(partial_accuracy=acc, accuracy_seen=seen, accuracy_bound=best)
            result.pruned = (f"hopeless after {seen}/{total} {self.split} images: even all the rest right gives "
                             f"accuracy <= {best:.4f}, dominated at {where}")
            return
        result.metrics = result.metrics.with_(accuracy=acc)
        if self.cache:
            self.cache.put_accuracy(config.key, result.metrics)

"""Evaluate one candidate configuration: compress → validated accuracy → latency on the target.

``Evaluator.evaluate(config)`` never raises (except ``KeyboardInterrupt``): a candidate that
fails to compress, compile or run returns a :class:`CandidateResult` whose ``error`` names the
stage and the reason, and the study records the trial as failed with that reason.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from vitune.compression.config import CompressionConfig
from vitune.errors import VituneError


@dataclass
class CandidateResult:
    metrics: dict = field(default_factory=dict)  # accuracy, latency_ms, params, size_bytes, ...
    timings: dict = field(default_factory=dict)  # compress_s, accuracy_s, export_s, build_s, run_s
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class Evaluator:
    """Holds what every trial needs: the original model, the splits, the latency source."""

    def __init__(self, workspace, profile, latency_source, split: str = "val"):
        self.workspace = workspace
        self.profile = profile
        self.latency_source = latency_source
        self.split = split
        self.example = workspace.example_input(1)
        self._calibrations: dict = {}

    def calibration(self, images: int):
        """The calibration batch (calib split), built once per size and reused by every trial."""
        from vitune.compression.calibrate import Calibration

        if images not in self._calibrations:
            self._calibrations[images] = Calibration.from_dataset(self.workspace.data.calib, images)
        return self._calibrations[images]

    def compress(self, config: CompressionConfig):
        from vitune.compression.pipeline import compress

        calib = self.calibration(config.methods.calib_images)
        return compress(self.workspace.model, config, train_data=self.workspace.data.train, calibration=calib)

    def evaluate(self, config: CompressionConfig) -> CandidateResult:
        from vitune.compression.stats import model_stats
        from vitune.data.splits import accuracy

        result = CandidateResult()
        stage = "compress"
        try:
            t0 = time.perf_counter()
            model = self.compress(config)
            t1 = time.perf_counter()
            stage = "accuracy"
            acc = accuracy(model, self.workspace.data.get(self.split))
            t2 = time.perf_counter()
            params, size = model_stats(model)
            result.metrics.update(accuracy=acc, params=params, size_bytes=size)
            result.timings.update(compress_s=t1 - t0, accuracy_s=t2 - t1)
        except VituneError as err:
            result.error = f"{stage} failed: {err}"
            return result
        except Exception as err:  # any other failure of a candidate is recorded, not raised
            result.error = f"{stage} failed: {type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}"
            return result
        t3 = time.perf_counter()
        m = self.latency_source.latency(model, config, self.example)
        result.timings.update({k: v for k, v in m.timings.items()}, latency_s=time.perf_counter() - t3)
        if not m.ok:
            result.error = m.error
            return result
        result.metrics.update(
            latency_ms=m.latency_ms,
            latency_spread_ms=m.spread_ms,
            latency_samples_ms=list(m.samples_ms),
            latency_source=m.source,
        )
        return result

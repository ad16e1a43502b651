"""The latency-source seam and its registry.

Contract of a :class:`LatencySource`:

* ``__init__(profile)`` — bound to one target profile;
* ``latency(model, config, example) → Measurement`` — the latency of ``model`` (the compressed
  candidate, an eval-mode ``nn.Module``) built from ``config``, for inputs shaped like
  ``example`` (batch included), in milliseconds. It **never raises**: failures come back
  as ``Measurement.error``. It may be called many times in one process; sources that keep
  state (a fitted model, a lookup table) must be safe to use from several processes that
  share files (write atomically).
"""

from __future__ import annotations

from typing import Callable, Protocol

from vitune.errors import ConfigError


class LatencySource(Protocol):
    name: str

    def latency(self, model, config, example): ...


_REGISTRY: dict[str, Callable] = {}


def register_latency_source(name: str, factory: Callable) -> None:
    """Register ``factory(profile) → LatencySource`` under ``name``; a duplicate name is an error."""
    if name in _REGISTRY:
        raise ValueError(f"latency source {name!r} is already registered")
    _REGISTRY[name] = factory


def latency_sources() -> list[str]:
    return sorted(_REGISTRY)


def get_latency_source(name: str, profile) -> LatencySource:
    if name not in _REGISTRY:
        raise ConfigError(f"unknown latency source {name!r} (known: {', '.join(latency_sources())})")
    return _REGISTRY[name](profile)


class MeasuredLatency:
    """The reference: compile the candidate with TVM for the target and time it there."""

    name = "measured"

    def __init__(self, profile, tuner=None):
        self.profile = profile
        self.tuner = tuner  # a vitune.targets.tuning.Tuner, or None for untuned kernels

    def latency(self, model, config, example, compiled_out: list | None = None):
        from vitune.targets.measure import measure

        return measure(model, example, self.profile, compiled_out, self.tuner)


register_latency_source("measured", MeasuredLatency)


def _predicted(kind: str):
    def factory(profile):
        from vitune.costmodels.predicted import PredictedLatency

        return PredictedLatency(profile, kind)

    return factory


for _kind in ("lut", "learned", "analytical"):
    register_latency_source(_kind, _predicted(_kind))

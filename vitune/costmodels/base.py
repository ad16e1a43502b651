"""The latency-source seam and its registry.

Contract of a :class:`LatencySource` (every built-in and plug-in source subclasses it):

* ``measures`` (class attribute) — ``True`` when a result is a measurement of the candidate's
  build on the target: the search caches it (keyed by target, tuning mode and configuration) and
  gives the source a :class:`~vitune.targets.tuning.Tuner` when the study tunes; ``False`` for
  a prediction: never cached (it changes with every refit), and the search re-measures the front;
* ``__init__(profile, tuner=None)`` — bound to one target profile, with the tuner the study's
  ``[target] tuning`` asks for (``None``: untuned kernels, or a source that does not build);
  cheap: nothing is loaded or compiled here;
* ``bind(workspace, space, tuning)`` — called once per study, before the first trial, with the
  original model and data, the search space and the tuning mode; a source that needs something
  it does not find (a fitted cost model) raises a one-line :class:`~vitune.errors.ConfigError`
  here, before any trial. The default does nothing;
* ``latency(model, config, example, compiled_out=None) → Measurement`` — the latency of
  ``model`` (the compressed candidate, an eval-mode ``nn.Module``) built from ``config``, for
  inputs shaped like ``example`` (batch included), in milliseconds; a source that builds appends
  its :class:`~vitune.targets.compile.CompiledModel` to ``compiled_out`` when given. It **never
  raises**: failures come back as ``Measurement.error``. It is called from one thread; several
  processes (workers) may each hold a source for the same target, so state kept in files (a
  fitted model, a lookup table) must be written atomically. The search calls it inside
  :func:`vitune.targets.measure.host_hold`: a source that builds and times through
  :mod:`vitune.targets.measure` builds beside other workers' CPU work and times alone.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from vitune.errors import ConfigError


class LatencySource(ABC):
    name: str = ""
    measures: bool = False

    def __init__(self, profile, tuner=None):
        self.profile = profile
        self.tuner = tuner

    def bind(self, workspace, space, tuning: str) -> None:
        """Once per study, before the first trial (see the module doc)."""

    @abstractmethod
    def latency(self, model, config, example, compiled_out: list | None = None): ...


_REGISTRY: dict[str, type[LatencySource]] = {}


def register_latency_source(cls: type[LatencySource]) -> type[LatencySource]:
    """Register a :class:`LatencySource` subclass under its ``name`` (usable as a decorator); a
    duplicate name is an error."""
    if not (isinstance(cls, type) and issubclass(cls, LatencySource)) or not cls.name:
        raise ValueError(f"{cls!r} is not a named LatencySource subclass")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"latency source {cls.name!r} is already registered")
    _REGISTRY[cls.name] = cls
    return cls


def latency_sources() -> list[str]:
    return sorted(_REGISTRY)


def latency_source_class(name: str) -> type[LatencySource]:
    if name not in _REGISTRY:
        raise ConfigError(f"unknown latency source {name!r} (known: {', '.join(latency_sources())})")
    return _REGISTRY[name]


def get_latency_source(name: str, profile, tuner=None) -> LatencySource:
    return latency_source_class(name)(profile, tuner)


@register_latency_source
class MeasuredLatency(LatencySource):
    """The reference: compile the candidate with TVM for the target and time it there.

    On a local device each candidate's latency is corrected for the machine's drift
    (:class:`~vitune.targets.measure.DriftReference`): the uncompressed model's build (the
    study's own trial 0, else built once on first need) is timed again just before and just
    after the candidate, and the candidate's latency divided by how slow the machine ran then.
    """

    name = "measured"
    measures = True

    def __init__(self, profile, tuner=None):
        super().__init__(profile, tuner)
        self.original = None  # the uncompressed model (bind), for the drift reference
        self.reference = None  # a DriftReference, once the uncompressed model is built

    def bind(self, workspace, space, tuning: str) -> None:
        self.original = workspace.model

    def latency(self, model, config, example, compiled_out: list | None = None):
        from vitune.targets.measure import DriftReference, measure

        if self.original is None or self.profile.runner != "local":
            return measure(model, example, self.profile, compiled_out, self.tuner, reuse_kernels=True)
        built: list = [] if compiled_out is None else compiled_out
        if config.is_identity:  # the reference itself (the study's trial 0): its own timing is its speed now
            m = measure(model, example, self.profile, built, self.tuner, reuse_kernels=True)
            if m.ok:
                if self.reference is None:
                    self.reference = DriftReference(built[-1], example, self.profile)
                self.reference.seen(m.latency_ms)
            return m
        if self.reference is None:  # built once, on first need
            from vitune.targets.compile import compile_model

            try:
                self.reference = DriftReference(compile_model(self.original, example, self.profile, self.tuner, reuse_kernels=True), example, self.profile)
            except Exception:  # no reference: the latency as timed
                return measure(model, example, self.profile, compiled_out, self.tuner, reuse_kernels=True)
        return measure(model, example, self.profile, compiled_out, self.tuner, reference=self.reference, reuse_kernels=True)

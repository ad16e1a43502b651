"""Predicted latency in a study: a fitted cost model answers instead of a TVM measurement.

``[target] latency = "lut" | "learned" | "analytical"`` makes the study's latency source a
:class:`PredictedLatency`. Before the first trial it is bound to the study's model and loads
the cost model ``vitune costmodel fit`` saved for (target, tuning mode, model) — a study never
starts on a model that does not exist; ``analytical`` alone works unfitted (its numbers are then
labelled uncalibrated). Every trial's metrics say where its latency came from
(``latency_source = "predicted:<label>"``).

:func:`vitune.search.remeasure.remeasure_front` closes the loop: the Pareto front's members (at the end of a run and
every ``remeasure_every`` completed trials) are measured for real where the target can be
measured; each check (predicted vs measured) is stored in the study (user attribute
``latency_checks``), the measurement joins the cost model's samples, and the model is refit
and saved.
"""

from __future__ import annotations

from vitune.costmodels.base import LatencySource, register_latency_source
from vitune.errors import ConfigError


class PredictedLatency(LatencySource):
    """A fitted cost model's prediction (``kind``: lut, learned or analytical; one registered
    subclass per kind in :mod:`vitune.costmodels.base`)."""

    kind = ""
    measures = False

    def __init__(self, profile, tuner=None):
        super().__init__(profile, None)  # predictions build nothing: the tuning mode comes with bind()
        self.context = None
        self.model = None

    def bind(self, workspace, space, tuning: str) -> None:
        from vitune.costmodels.model import cost_model_class, default_path, load_cost_model
        from vitune.costmodels.samples import CostContext

        self.context = CostContext(self.profile, workspace.model, workspace.example_input(1), space, tuning)
        path = default_path(self.context, self.kind)
        if path.is_file():
            self.model = load_cost_model(path)
            self.model.check_target(self.context)
        elif self.kind == "analytical":
            self.model = cost_model_class("analytical").for_context(self.context)
        else:
            raise ConfigError(
                f"[target] latency = {self.kind!r}: no fitted {self.kind} cost model for target {self.profile.name} "
                f"(tuning {tuning}) and this model ({path} is missing); run "
                f"'vitune costmodel fit {self.profile.name} --model STUDY.toml' first"
            )

    def latency(self, model, config, example, compiled_out: list | None = None):
        from vitune.targets.measure import Measurement

        if self.model is None:
            return Measurement(target=self.profile.name, error=f"latency source {self.kind!r} was not bound to the study's model")
        p = self.model.predict(model, self.context)
        return Measurement(
            target=self.profile.name, latency_ms=p.latency_ms, spread_ms=p.uncertainty_ms, error=p.error,
            timings={"predict_s": p.seconds}, source=f"predicted:{p.label}",
        )


for _kind in ("lut", "learned", "analytical"):
    register_latency_source(type(f"{_kind.capitalize()}Latency", (PredictedLatency,), {"name": _kind, "kind": _kind}))

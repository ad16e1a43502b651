"""Predicted latency in a study: a fitted cost model answers instead of a TVM measurement.

``[target] latency = "lut" | "learned" | "analytical"`` makes the study's latency source a
:class:`PredictedLatency`. Before the first trial it is bound to the study's model and loads
the cost model ``vitune costmodel fit`` saved for (target, tuning mode, model) — a study never
starts on a model that does not exist; ``analytical`` alone works unfitted (its numbers are then
labelled uncalibrated). Every trial's metrics say where its latency came from
(``latency_source = "predicted:<label>"``).

:func:`remeasure_front` closes the loop: the Pareto front's members (at the end of a run and
every ``remeasure_every`` completed trials) are measured for real where the target can be
measured; each check (predicted vs measured) is stored in the study (user attribute
``latency_checks``), the measurement joins the cost model's samples, and the model is refit
and saved.
"""

from __future__ import annotations

from vitune.errors import ConfigError


class PredictedLatency:
    def __init__(self, profile, kind: str):
        self.profile, self.kind = profile, kind
        self.name = kind
        self.context = None
        self.model = None

    def bind(self, workspace, space, tuning: str) -> None:
        from vitune.compression.calibrate import Calibration
        from vitune.costmodels.model import cost_model_class, default_path, load_cost_model
        from vitune.costmodels.samples import CostContext

        calib = Calibration.from_dataset(workspace.data.calib, min(32, space.methods.calib_images))
        self.context = CostContext(self.profile, workspace.model, workspace.example_input(1), space, tuning, calib)
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

    def latency(self, model, config, example):
        from vitune.targets.measure import Measurement

        if self.model is None:
            return Measurement(target=self.profile.name, error=f"latency source {self.kind!r} was not bound to the study's model")
        p = self.model.predict(model, self.context)
        return Measurement(
            target=self.profile.name, latency_ms=p.latency_ms, spread_ms=p.uncertainty_ms, error=p.error,
            timings={"predict_s": p.seconds}, source=f"predicted:{p.label}",
        )


def remeasure_front(study, evaluator, source: PredictedLatency, log=print) -> int:
    """Measure the front's unchecked members for real, record predicted vs measured, refit; returns how many."""
    from vitune.costmodels.model import default_path
    from vitune.search.front import front
    from vitune.search.study import trial_config

    context = source.context
    checks = dict(study.user_attrs.get("latency_checks", {}))
    todo = [t for t in front(study) if str(t.number) not in checks]
    if not todo:
        return 0
    store, added = context.store(), 0
    configs = [trial_config(t) for t in todo]
    measured = context.measure_candidates([evaluator.compress(c) for c in configs], configs)
    for trial, (sample, m) in zip(todo, measured):
        predicted = trial.user_attrs.get("metrics", {}).get("latency_ms")
        checks[str(trial.number)] = {"predicted_ms": predicted, "measured_ms": m.latency_ms, "error": m.error, "label": source.model.label()}
        if not m.ok:
            log(f"trial {trial.number}: predicted {predicted:.4f} ms, could not measure: {m.error}")
            continue
        log(f"trial {trial.number}: predicted {predicted:.4f} ms, measured {m.latency_ms:.4f} ms ({100 * (predicted / m.latency_ms - 1):+.1f} %)")
        store.append(sample)
        added += 1
    study.set_user_attr("latency_checks", checks)
    if added:
        samples = store.load()
        try:
            source.model.fit(samples, context)
            source.model.save(default_path(context, source.kind))
            log(f"{source.kind} cost model refit on {source.model.fitted_samples} measurements")
        except (ValueError, RuntimeError) as err:
            log(f"{source.kind} cost model not refit: {err}")
    context.kernels.save()
    return len(todo)

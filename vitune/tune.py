"""``vitune tune``: warm a target's tuning database ahead of a study.

Tunes the workloads of the study's uncompressed model, then of ``configs`` random
configurations drawn from the study's search space (compressed candidates bring new shapes),
and reports, per model, how many workloads were already in the database, how many were tuned
and how long it took; finally the uncompressed model's latency untuned and tuned.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TuneRun:
    rows: list[dict] = field(default_factory=list)
    untuned_ms: float | None = None
    tuned_ms: float | None = None
    database: str = ""


def tune_study_models(spec, profile, trials_per_task: int, configs: int, budget_s: float, log=print, seed: int = 0) -> TuneRun:
    from vitune.compression.calibrate import Calibration
    from vitune.compression.pipeline import compress
    from vitune.models.layers import discover
    from vitune.models.zoo import load_workspace
    from vitune.search.space import SearchSpace
    from vitune.targets.measure import measure
    from vitune.targets.tuning import Tuner

    ws = load_workspace(spec.model, spec.data, progress=False)
    example = ws.example_input(1)
    # shipped schedules tuned on another CPU model do not stand in for this one's
    tuner = Tuner(profile, "tune", trials_per_task, budget_s, other_cpu_seeds=False)
    run = TuneRun(database=str(tuner.database_path))
    models = [("uncompressed", ws.model)]
    if configs:
        space = SearchSpace.build(spec.space, discover(ws.model), spec.methods, where=str(spec.path))
        calib = Calibration.from_dataset(ws.data.calib, spec.methods.calib_images)
        identity = space.to_config(space.identity_params())
        for i, config in enumerate(space.random_configs(configs, seed, exclude={identity.key}, fixed={"distill_steps": 0})):
            models.append((f"random config {i + 1}: {config.summary()}", compress(ws.model, config, ws.data.train, calib)))
    untuned = measure(ws.model, example, profile)
    run.untuned_ms = untuned.latency_ms
    try:
        for label, model in models:
            m = measure(model, example, profile, tuner=tuner)
            rep = tuner.report
            row = {"model": label, "latency_ms": m.latency_ms, "error": m.error, "tune_s": m.timings.get("tune_s", 0.0),
                   "tuned_workloads": m.timings.get("tuned_workloads"), "untuned_workloads": m.timings.get("untuned_workloads")}
            run.rows.append(row)
            if label == "uncompressed":
                run.tuned_ms = m.latency_ms
            lat = f"{m.latency_ms:.4f} ms" if m.ok else f"FAILED {m.error}"
            log(f"{label}: {lat}; tuning {row['tune_s']:.1f} s; so far {rep.line()}")
    finally:
        tuner.close()
    return run

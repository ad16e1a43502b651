"""``vitune tune``: warm a target's tuning database ahead of a study.

Tunes the workloads of the study's uncompressed model; with ``cover``, of the configurations of
:meth:`SearchSpace.covering_configs` (each attention and MLP unit takes every combination of its
menus in some block of some configuration), which together build every kernel a candidate of
the space can build, so a study that follows times tuned kernels in every trial and tunes
nothing; then of ``configs`` random configurations of the space (after ``cover``: a check that
they find everything in the database). Reports, per model, how many workloads were already
in the database, how many were tuned and how long it took; finally the uncompressed model's
latency untuned and tuned.

Candidates are built structurally (plain SVD, magnitude pruning, min-max activation scales, no
refinement or distillation): the same shapes and dtypes as the study's, at a fraction of the
compression time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vitune.compression.config import CompressionConfig


@dataclass
class TuneRun:
    rows: list[dict] = field(default_factory=list)
    untuned_ms: float | None = None
    tuned_ms: float | None = None
    database: str = ""


def tune_study_models(spec, profile, trials_per_task: int, configs: int, budget_s: float, log=print, seed: int = 0,
                      cover: bool = False) -> TuneRun:
    from vitune.compression.pipeline import compress_structural
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
    models: list[tuple[str, CompressionConfig | None]] = [("uncompressed", None)]
    space = SearchSpace.build(spec.space, discover(ws.model), spec.methods, where=str(spec.path))
    chosen = space.covering_configs() if cover else []
    models += [(f"cover {i + 1}/{len(chosen)}: {c.summary()}", c) for i, c in enumerate(chosen)]
    if configs:
        identity = space.to_config(space.identity_params())
        drawn = space.random_configs(configs, seed, exclude={identity.key}, fixed={"distill_steps": 0})
        models += [(f"random config {i + 1}: {c.summary()}", c) for i, c in enumerate(drawn)]
    if cover:
        log(f"tuning the uncompressed model and {len(chosen)} configurations that build every kernel of the space"
            + (f", then {configs} random configurations" if configs else "") + f" ({trials_per_task} trials per new workload"
            + (f", budget {budget_s:.0f} s" if budget_s else "") + ")")
    untuned = measure(ws.model, example, profile)
    run.untuned_ms = untuned.latency_ms
    try:
        for label, config in models:
            model = ws.model if config is None else compress_structural(ws.model, config)
            before = tuner.report.tuned
            m = measure(model, example, profile, tuner=tuner)
            rep = tuner.report
            row = {"model": label, "latency_ms": m.latency_ms, "error": m.error, "tune_s": m.timings.get("tune_s", 0.0),
                   "tuned_workloads": m.timings.get("tuned_workloads"), "untuned_workloads": m.timings.get("untuned_workloads"),
                   "new_workloads": rep.tuned - before, "random": label.startswith("random")}
            run.rows.append(row)
            if label == "uncompressed":
                run.tuned_ms = m.latency_ms
            lat = f"{m.latency_ms:.4f} ms" if m.ok else f"FAILED {m.error}"
            log(f"{label}: {lat}; tuning {row['tune_s']:.1f} s; so far {rep.line()}")
    finally:
        tuner.close()
    drawn_rows = [r for r in run.rows if r["random"]]
    if cover and drawn_rows:
        new = sum(r["new_workloads"] for r in drawn_rows)
        log(f"the {len(drawn_rows)} random configurations after the covering ones tuned {new} new workload(s)"
            + (": every kernel they build was in the database" if not new else ""))
    return run

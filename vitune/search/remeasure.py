"""A predicted-latency study's front measured for real: predicted vs measured recorded in the
study (``latency_checks``), the measurements added to the cost model's samples and the model
refit. The study's side of :mod:`vitune.costmodels.predicted` (cost models know nothing of
studies)."""

from __future__ import annotations


def remeasure_front(study, evaluator, source, log=print) -> int:
    """Measure the front's unchecked members for real, record predicted vs measured, refit; returns how many."""
    from vitune.costmodels.model import default_path
    from vitune.search.front import front, latency_of
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
        predicted = latency_of(trial)
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

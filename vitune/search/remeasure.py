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


def build_as_shipped(evaluator, configs: dict, example, profile, progress: bool = False) -> tuple[dict, dict]:
    """Each configuration of ``configs`` (name → configuration) built as ``vitune apply`` ships
    it: tuned kernels from the target's database; the build this process made and kept
    (``Evaluator.builds``, and the drift reference's for the uncompressed model) where there is
    one, else built again. Returns ``(builds, errors)`` by name; never raises: a configuration
    that no longer builds is named with its reason."""
    from vitune.errors import short_reason
    from vitune.targets.compile import compile_model
    from vitune.targets.tuning import Tuner

    items = configs.items()
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(items, desc="builds as shipped", unit="build")
    tuner = Tuner(profile, "database")
    builds, errors = {}, {}
    reference = getattr(evaluator.latency_source, "reference", None)  # the drift reference: the uncompressed build
    try:
        for name, config in items:
            try:
                kept = evaluator.builds.get(config.key)
                if kept is None and config.is_identity and reference is not None:
                    kept = reference.compiled
                # a trial's build reused this process's kernels: linked again into one library, as it ships
                builds[name] = kept.shipped() if kept is not None else compile_model(evaluator.compress(config), example, profile, tuner)
            except Exception as err:
                errors[name] = short_reason(err)
    finally:
        tuner.close()
    return builds, errors


def time_front_with_baseline(study, evaluator, workspace, profile, log=print) -> int:
    """The front's members and the uncompressed model built as ``vitune apply`` ships them
    (tuned kernels from the target's database: the trial's own build where this process made it
    and kept it, ``Evaluator.builds``, else built again) and timed side by side with the study's
    baseline runtime, in interleaved rounds: the speed-ups the front shows (``format_front``) and
    exports record. The study's own baseline is timed when it starts and each trial when it runs; on a
    machine whose speed drifts the two moments differ, these rounds do not. Stored in the
    study's ``front_timing`` attribute; returns how many builds were timed. Never raises: a build
    that fails is listed with its reason."""
    from vitune.search.front import FRONT_TIMING, front, uncompressed_trial
    from vitune.search.study import trial_config
    from vitune.targets.peers import measure_baseline

    members = front(study)
    ref = uncompressed_trial(study)
    if ref is not None and all(t.number != ref.number for t in members):
        members.append(ref)
    if not members:
        return 0
    example = workspace.example_input(1)
    # a member that no longer builds is named, the others are timed
    builds, errors = build_as_shipped(evaluator, {str(t.number): trial_config(t) for t in members}, example, profile)
    base = measure_baseline(workspace.model, example, profile, others=builds)
    study.set_user_attr(FRONT_TIMING, {"baseline": base.to_dict(), "errors": errors})
    if base.latency_ms:
        log(f"front timed side by side with the uncompressed model in {base.label}: {base.latency_ms:.4f} ms; "
            f"{base.rounds} interleaved rounds: " + ", ".join(f"trial {n} {ms:.4f} ms" for n, ms in base.others_ms.items()))
    return len(base.others_ms)


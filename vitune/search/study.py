"""The study loop: create or resume an Optuna study and run trials on it, alone or as one of
many workers sharing its storage.

The study stores ``vitune`` metadata (model reference, target, mode, methods) so a study is never
resumed against a different model or setting; trials store what :mod:`vitune.search.objective`
lists. ``run_study`` runs until the study holds ``n_trials`` finished trials (complete or
stopped early), counting every worker's, or ``--n-trials`` more of its own; Ctrl-C stops after
the current trial (twice: at once), and the study keeps everything finished.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
import warnings
from dataclasses import dataclass

from vitune.compression.config import CompressionConfig
from vitune.compression.methods import CompressionMethods
from vitune.errors import ConfigError, message_line
from vitune.search.budgets import META_KEYS as BUDGET_KEYS
from vitune.search.budgets import Budget
from vitune.search.front import count_states, format_front, front, status_text, uncompressed_trial  # noqa: F401 (re-exported)
from vitune.search.records import accuracy_of, latency_of, metrics_of, time_split
from vitune.search.objective import CandidateFailed, Objective, directions, make_sampler
from vitune.search.objectives import DEFAULT as DEFAULT_OBJECTIVES
from vitune.search.objectives import Objectives


def spec_objectives(spec, primary: str = "", others=None) -> Objectives:
    """The study file's ``[search] objectives`` on its targets (names as the profiles spell them
    when given; the study file's target names otherwise)."""
    targets = (primary or spec.target.name, *(others if others is not None else (t.name for t in spec.also)))
    return Objectives.from_names(spec.search.objectives, targets)


@dataclass
class RunSummary:
    new_complete: int
    new_failed: int
    seconds: float
    total_complete: int
    new_pruned: int = 0
    interrupted: bool = False


def open_study(spec, create: bool = True, sampler=None):
    """Load the study named in ``spec`` from its storage (creating it when ``create``)."""
    import optuna

    from vitune.search.storage import make_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if not create:
        from vitune.search.storage import storage_file

        path = storage_file(spec.storage)
        if path is not None and not path.exists():  # read-only commands create nothing
            raise ConfigError(f"no study {spec.name!r} in {spec.storage}: {path} does not exist (run 'vitune study run {spec.path}' first)")
    try:
        storage = make_storage(spec.storage)
    except ConfigError as err:
        raise ConfigError(f"{spec.path} [study] storage: {err}") from None
    try:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    except Exception as err:  # a storage that opens but cannot be read as Optuna's
        raise ConfigError(f"storage {spec.storage} cannot be read as an Optuna storage: {message_line(err, last=False)}") from None
    if spec.name not in names and not create:
        raise ConfigError(f"no study {spec.name!r} in {spec.storage} (run 'vitune study run {spec.path}' first)")
    objectives = spec_objectives(spec)
    wanted = directions(spec.search.mode, objectives)
    if spec.name in names:
        study = optuna.load_study(study_name=spec.name, storage=storage, sampler=sampler)
        got = [d.name.lower() for d in study.directions]
        if got != wanted:
            if not (got and got[0] == "maximize" and all(d == "minimize" for d in got[1:])):
                raise ConfigError(f"study {spec.name!r} in {spec.storage} was not created by vitune (its objectives are {got})")
            mode = "constrained" if len(got) == 1 else "pareto"
            if mode != spec.search.mode:
                raise ConfigError(f"study {spec.name!r} in {spec.storage} was created with [search] mode = {mode!r}, the study file "
                                  f"says {spec.search.mode!r}: give the study a new name or storage")
            raise ConfigError(f"study {spec.name!r} in {spec.storage} has the objectives {study.metric_names or got}, the study file "
                              f"asks for {objectives.names()} ([search] objectives, one latency per target): give the study a new "
                              "name or storage")
        return study
    return optuna.create_study(study_name=spec.name, storage=storage, directions=wanted, load_if_exists=True, sampler=sampler)


def resumed_methods(study, spec, log=print):
    """``spec`` with the [compression] settings its file leaves to the defaults taken from the
    study it resumes, where they were recorded with another value (a default that changed
    since: ``refine_solver`` was ``adam`` until stop 47). Settings the file names (or a spec
    made in code sets to another value than the default) are kept, and :func:`check_metadata`
    refuses them if they differ from the study's."""
    import dataclasses

    recorded = (study.user_attrs.get("vitune") or {}).get("methods")
    if recorded is None:
        return spec
    recorded = CompressionMethods.as_recorded(recorded)
    current, defaults = spec.methods.to_dict(), CompressionMethods().to_dict()
    left = [k for k in current if k not in spec.methods_set and current[k] == defaults[k]]  # to the default
    keep = {k: recorded[k] for k in left if k in recorded and recorded[k] != current[k]}
    if not keep:
        return spec
    log(f"study {spec.name}: resuming with [compression] " + ", ".join(f"{k} = {v!r}" for k, v in keep.items())
        + " as it was made (the study file leaves " + ("it" if len(keep) == 1 else "them")
        + " to vitune's default, now " + ", ".join(repr(current[k]) for k in keep) + ")")
    return dataclasses.replace(spec, methods=dataclasses.replace(spec.methods, **keep))


def check_metadata(study, spec, ref, profile, more_profiles: tuple = (), objectives: Objectives | None = None) -> None:
    """``objectives``: the study file's, on these profiles (see :func:`spec_objectives`)."""
    objectives = objectives or spec_objectives(spec, profile.name, [p.name for p in more_profiles])
    meta = study.user_attrs.get("vitune")
    also = [{"name": p.name, "latency": t.latency, "tuning": t.tuning, **Budget.from_spec(t).to_meta()}
            for p, t in zip(more_profiles, spec.also)]
    expected = {
        "model": ref.to_dict(), "target": profile.name, "objectives": objectives.to_meta(),
        "methods": spec.methods.to_dict(), "tuning": spec.target.tuning, "latency": spec.target.latency,
        "mode": spec.search.mode, **Budget.from_spec(spec.target).to_meta(), "also": also,
    }
    if meta is None:
        if study.trials:
            raise ConfigError(f"study {spec.name!r} in {spec.storage} has trials but no vitune metadata: it was not created by vitune")
        from vitune import __version__

        study.set_user_attr("vitune", {**expected, "version": __version__, "study_file": str(spec.path)})
        names = objectives.names()
        with warnings.catch_warnings():  # experimental in Optuna; optuna-dashboard shows these names
            warnings.simplefilter("ignore")
            study.set_metric_names(names[: len(study.directions)])
        return
    if meta.get("objectives", list(DEFAULT_OBJECTIVES)) != expected["objectives"]:
        raise ConfigError(
            f"study {spec.name!r} in {spec.storage} minimises {meta.get('objectives', list(DEFAULT_OBJECTIVES))[1:]} beside accuracy, "
            f"the study file's [search] objectives ask for {expected['objectives'][1:]}: give the study a new name or storage"
        )
    recorded = [{k: v for k, v in t.items() if k not in BUDGET_KEYS} for t in meta.get("also", [])]
    if recorded != [{k: v for k, v in t.items() if k not in BUDGET_KEYS} for t in also]:
        raise ConfigError(
            f"study {spec.name!r} in {spec.storage} was run on the extra targets "
            f"{[t['name'] + ' (' + t['latency'] + ')' for t in meta.get('also', [])]}, the study file's [[target.also]] lists "
            f"{[t['name'] + ' (' + t['latency'] + ')' for t in also]}: give the study a new name or storage"
        )
    if meta.get("model", {}).get("checkpoint_sha256") != ref.checkpoint_sha256:
        raise ConfigError(
            f"study {spec.name!r} in {spec.storage} was run on model {meta.get('model', {}).get('name')} "
            f"(weights {meta.get('model', {}).get('checkpoint_sha256', '?')[:12]}), not on this file's model "
            f"(weights {ref.checkpoint_sha256[:12]}): give the study a new name or storage"
        )
    if meta.get("target") != profile.name:
        raise ConfigError(
            f"study {spec.name!r} in {spec.storage} measured latency on target {meta.get('target')!r}, "
            f"not {profile.name!r}: give the study a new name or storage"
        )
    if meta.get("tuning", spec.target.tuning) != spec.target.tuning:
        raise ConfigError(
            f"study {spec.name!r} in {spec.storage} measured latency with [target] tuning = {meta.get('tuning')!r}, "
            f"the study file now says {spec.target.tuning!r}: tuned and untuned latencies are not comparable; "
            "give the study a new name or storage"
        )
    if meta.get("latency", spec.target.latency) != spec.target.latency:
        raise ConfigError(
            f"study {spec.name!r} in {spec.storage} scored latency as {meta.get('latency')!r}, the study file now says "
            f"[target] latency = {spec.target.latency!r}: predicted and measured latencies are not comparable; "
            "give the study a new name or storage"
        )
    budgets = {k: expected[k] for k in BUDGET_KEYS}
    if spec.search.mode == "constrained" and ({k: meta.get(k) for k in BUDGET_KEYS}, meta.get("also", [])) != (budgets, also):
        # a different budget changes which trials count; the trials themselves stay valid
        study.set_user_attr("vitune", {**meta, **budgets, "also": also})
    recorded = meta.get("methods")
    if recorded is not None:  # settings added since the study was made are read as it was made
        recorded = CompressionMethods.as_recorded(recorded)
    if recorded is not None and recorded != spec.methods.to_dict():
        changed = sorted(k for k in spec.methods.to_dict() if recorded.get(k) != getattr(spec.methods, k))
        key = changed[0] if changed else "?"
        raise ConfigError(
            f"study {spec.name!r} in {spec.storage} was run with [compression] {key} = {recorded.get(key)!r}, "
            f"the study file now says {getattr(spec.methods, key, None)!r}: results made differently are not "
            "comparable; give the study a new name or storage"
        )


SHOWN_DRIFT = 1.1  # a trial's line says when it was timed while the machine ran slower than this


def trial_config(trial) -> CompressionConfig | None:
    text = trial.user_attrs.get("config")
    return None if text is None else CompressionConfig.from_json(text, where=f"trial {trial.number} config")


def baseline_params(space) -> list[dict]:
    """The uncompressed model, then each single knob value applied uniformly to every layer."""
    from vitune.search.warmstart import uniform_params

    return [space.identity_params()] + [p for _, _, p in uniform_params(space)]


def time_baselines(workspace, targets, log=print) -> dict:
    """{target name: ``Baseline.to_dict()``} for each (profile, target spec) whose device this
    process reaches: the uncompressed model in the best runtime that target has, the reference of
    every speed-up the study shows (see :mod:`vitune.targets.peers`)."""
    from vitune.targets.peers import Baseline, measure_baseline

    out = {}
    for profile, target in targets:
        if target.latency != "measured" and profile.runner != "local":
            log(f"no speed-up baseline on {profile.name}: its latency is predicted and its device is not measured from here")
            continue
        base = measure_baseline(workspace.model, workspace.example_input(1), profile)
        out[profile.name] = base.to_dict()
        log(f"{profile.name}: {Baseline(**out[profile.name]).line()}")
    return out


def _check_target(spec, target, profile, where: str = "[target]") -> None:
    if target.latency == "measured":
        from vitune.targets.runner import runner_for

        problem = runner_for(profile).check()  # bounded by the profile's timeout
        if problem:
            raise ConfigError(
                f"{spec.path} {where} latency = \"measured\": target {profile.name} cannot be measured from here "
                f"({problem}); use latency = \"analytical\" (a roofline estimate from the profile's hardware facts, "
                "labelled as such) or \"lut\" / \"learned\" (vitune costmodel fit where the device is reachable)"
            )
    if target.tuning == "tune" and (profile.runner != "local" or not profile.is_native):
        raise ConfigError(
            f"{spec.path} {where} tuning = \"tune\": target {profile.name} runs on another device and vitune tunes "
            "in-process only; tune where it runs (vitune tune there) and use tuning = \"database\""
        )


def latency_source_for(spec, target, where: str):
    """(profile, latency source, tuner or None) of one target of the study, checked."""
    from vitune.costmodels import latency_source_class
    from vitune.targets import load_target

    try:
        profile = load_target(target.name)
    except ConfigError as err:
        raise ConfigError(f"{spec.path} {where} name: {err}") from None
    cls = latency_source_class(target.latency)
    _check_target(spec, target, profile, where)
    tuner = None
    if target.tuning != "off" and cls.measures:  # a source that builds gets the study's tuner
        from vitune.targets.tuning import Tuner

        tuner = Tuner(profile, target.tuning, target.tuning_trials, target.tuning_budget_s, other_cpu_seeds=target.seeds == "any")
    return profile, cls(profile, tuner), tuner


class _StopOnSignal:
    """First Ctrl-C (or SIGTERM): finish the current trial, then stop. Second Ctrl-C: stop now."""

    def __init__(self, log):
        self.requested, self.log, self._old = False, log, {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.log("stopping after the current trial (Ctrl-C again to stop at once; finished trials are kept)")

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


def run_study(spec, n_trials: int | None = None, timeout_s: float | None = None, progress: bool = True, log=print,
              worker: bool = False, on_ready=None) -> RunSummary:
    """Run (or resume) the study of ``spec``; see the CLI's ``vitune study run`` and ``study worker``.

    Without ``n_trials`` it runs until the study holds ``spec.n_trials`` finished trials, counting
    those of every worker sharing the storage; with it, that many more of its own. ``worker``
    varies the sampler's seed by process, so workers started together sample differently.
    ``on_ready()`` is called once the study is set up (first trials enqueued), before trials run.
    """
    import optuna
    from tqdm.auto import tqdm

    from vitune.models.layers import discover
    from vitune.models.zoo import load_workspace
    from vitune.search.cache import ResultCache, data_key, target_key
    from vitune.search.coordination import HostLock, reap_stale
    from vitune.search.notes import study_notes
    from vitune.search.evaluate import EarlyStop, Evaluator, MoreTarget
    from vitune.search.space import SearchSpace
    from vitune.search.refine import Refiner, refine_after
    from vitune.search.warmstart import cached_sweep, first_trials, run_sweep

    profile, source, tuner = latency_source_for(spec, spec.target, "[target]")
    others = [latency_source_for(spec, t, f"[[target.also]] #{i + 1}") for i, t in enumerate(spec.also)]
    names = [profile.name] + [p.name for p, _, _ in others]
    if len(set(names)) < len(names):
        raise ConfigError(f"{spec.path}: the study names target {next(n for n in names if names.count(n) > 1)!r} twice")
    study = open_study(spec)  # fail fast on a bad storage before any heavy work
    reaped = reap_stale(study)
    if reaped:
        log(f"marked {len(reaped)} trial(s) left running by a stopped worker as failed: {', '.join(map(str, reaped))}")
    spec = resumed_methods(study, spec, log)
    workspace = load_workspace(spec.model, spec.data, progress=progress)
    objectives = spec_objectives(spec, profile.name, [p.name for p, _, _ in others])
    check_metadata(study, spec, workspace.ref, profile, tuple(p for p, _, _ in others), objectives)
    space = SearchSpace.build(spec.space, discover(workspace.model), spec.methods, where=str(spec.path))
    if "space" not in study.user_attrs:  # the menus and ties, for reports (per-layer recipes)
        study.set_user_attr("space", {"choices": [[n, list(m)] for n, m in space.choices], "ties": [[n, list(m)] for n, m in space.ties]})
    from vitune.costmodels.predicted import PredictedLatency

    predicted = isinstance(source, PredictedLatency)  # its front is re-measured and the model refit
    # a measured front is timed again at the end, side by side with the baseline (local devices:
    # a board over RPC is lent one session at a time, and its rounds would cost minutes)
    measured_here = spec.target.latency == "measured" and profile.runner == "local"
    every = [(profile, source, spec.target), *((p, src, t) for (p, src, _), t in zip(others, spec.also))]
    for p, src, t in every:
        src.bind(workspace, space, t.tuning)  # fails fast when no fitted cost model exists
        for note in study_notes(spec, space.layout, p, t):
            log(note)

    def cache(p, t):
        return ResultCache(workspace.ref.checkpoint_sha256, data_key(spec.data, "val"), target_key(p, t.tuning, t.seeds) if t.latency == "measured" else None)

    def local(p, t) -> bool:
        return t.latency == "measured" and p.runner == "local"

    host_lock = HostLock() if any(local(p, t) for p, _, t in every) else None
    if "baseline" not in study.user_attrs:  # the speed-up reference, timed once per study
        with host_lock.exclusive() if host_lock is not None else contextlib.nullcontext():  # alone on this machine
            if "baseline" not in study.user_attrs:  # another worker may have timed it meanwhile
                study.set_user_attr("baseline", time_baselines(workspace, [(p, t) for p, _, t in every], log))

    for p, t in [(profile, tuner), *((p, tu) for p, _, tu in others)]:
        if t is not None:
            shipped = "; ".join(seed.label(p) for seed, _ in t.seeds) or "none fit this target"
            log(f"{p.name}: kernels tuned ({t.mode}, {t.trials_per_task} trials per new workload) into {t.database_path}; "
                f"below it, {shipped}")
    evaluator = Evaluator(
        workspace, profile, source,
        early=EarlyStop(spec.search.min_fidelity, spec.search.fidelity_images, spec.search.accuracy_shards),
        cache=cache(profile, spec.target),
        host_lock=host_lock,
        more=tuple(MoreTarget(p.name, src, cache(p, t), local(p, t)) for p, src, t in every[1:]),
        objectives=objectives,
        overlap=spec.search.overlap,
    )
    evaluator.keep_builds = measured_here and not worker  # the front's builds, timed again at the end
    counts = count_states(study)
    done = counts.get("complete", 0) + counts.get("pruned", 0)
    goal = spec.n_trials if n_trials is None else done + max(0, n_trials)
    remaining = max(0, goal - done)
    timeout = timeout_s if timeout_s is not None else (spec.timeout_s or None)
    # the warm start's kinds take at most a third of the budget and the sensitivity walk's points
    # fill it up to half (warmstart.first_trials); refinement takes at most another third
    limit = spec.n_trials // 3
    sweep = None
    if not study.trials and remaining:
        sweep = run_sweep(workspace, space, evaluator, spec, progress=progress, log=log) if spec.search.warm_start and limit > 1 else None
        for params, origin in first_trials(space, sweep, spec.n_trials // 2, kinds=limit):
            study.enqueue_trial(params, user_attrs={"origin": origin}, skip_if_exists=True)
    elif spec.search.warm_start and spec.search.refine_front and remaining:
        sweep = cached_sweep(workspace, space, evaluator, spec)  # resumed: the sweep made when the study began
    refiner = Refiner(space, sweep) if sweep is not None and spec.search.refine_front else None
    seed = spec.seed + len(study.trials) + (os.getpid() if worker else 0)
    study.sampler = make_sampler(spec.sampler, seed % 2**31, spec.n_trials)
    log(
        f"study {spec.name}: {done} trials done, running {remaining} more on {', '.join(names)} "
        f"({len(space.choices)} knobs, {space.size:.3g} configurations, {spec.search.mode}), storage {spec.storage}"
    )
    if remaining == 0:
        if predicted and study.trials:  # a run that ended before its closing re-measurement (stopped, crashed): done now
            from vitune.search.remeasure import remeasure_front

            n = remeasure_front(study, evaluator, source, log=log)
            if n:
                log(f"re-measured {n} front member(s) on {profile.name} that the run which finished the study left unchecked")
        return RunSummary(0, 0, 0.0, done)
    if on_ready is not None:
        on_ready()
    objective = Objective(space, evaluator, study, spec.search.mode, tuple(Budget.from_spec(t) for t in spec.targets),
                          tuple(names), log=log, objectives=objectives)
    mine: dict[str, int] = {}  # this process's trials by state (other workers' are not counted)
    timed: list[dict] = []  # this process's trials' time splits
    attempts: list[int] = []  # ... and how many times each was timed around the drift reference
    bar = tqdm(total=remaining, desc=f"{spec.name}", unit="trial", disable=None if progress else True)
    say = bar.write if not bar.disable else log

    def recheck(final: bool = False):
        from vitune.search.remeasure import remeasure_front

        n = remeasure_front(study, evaluator, source, log=say)
        if n and final:
            log(f"re-measured {n} front member(s) on {profile.name}; predicted vs measured in 'vitune study status'")

    with _StopOnSignal(say) as stop:

        def on_trial(study_, trial):
            bar.update(1)
            timed.append(trial.user_attrs.get("timings", {}))
            tries = metrics_of(trial).latency_attempts
            if tries:
                attempts.append(tries)
            mine[trial.state.name.lower()] = mine.get(trial.state.name.lower(), 0) + 1
            now = count_states(study_)
            every = spec.target.remeasure_every
            if predicted and every and trial.state == optuna.trial.TrialState.COMPLETE and now.get("complete", 0) % every == 0:
                recheck()
            if evaluator.keep_builds:
                ref = uncompressed_trial(study_)
                kept = front(study_) + ([ref] if ref is not None else [])
                evaluator.retain(c.key for c in map(trial_config, kept) if c is not None)
            if refiner is not None:  # the neighbours of a new front member run next
                refine_after(study_, trial, refiner, limit)
            if trial.state == optuna.trial.TrialState.COMPLETE:
                acc, ms = accuracy_of(trial), latency_of(trial)
                bar.set_postfix(acc=f"{acc:.3f}", ms=f"{ms:.3f}")
                if bar.disable and progress:  # not a terminal: one line per trial instead of a bar
                    drift = metrics_of(trial).latency_drift
                    log(
                        f"trial {trial.number}: accuracy {acc:.4f}, latency {ms:.4f} ms, "
                        f"{trial.user_attrs.get('summary', '')}" + (f" (as trial {trial.user_attrs['cached_from']})" if "cached_from" in trial.user_attrs else "")
                        + (f" (timed while the machine ran {drift:.2f}x slow: corrected)" if drift and drift > SHOWN_DRIFT else "")
                    )
            elif trial.state == optuna.trial.TrialState.FAIL:
                say(f"trial {trial.number} failed: {trial.user_attrs.get('error', 'unknown error')}")
            elif trial.state == optuna.trial.TrialState.PRUNED and bar.disable and progress:
                log(f"trial {trial.number} stopped early: {trial.user_attrs.get('pruned', '')}")
            # every worker's finished trials count; trials still running elsewhere will finish too
            finished = now.get("complete", 0) + now.get("pruned", 0)
            if stop.requested or (n_trials is None and finished + now.get("running", 0) >= goal):
                study_.stop()

        from vitune.targets.kernels import LIBRARY

        kernels_before = (LIBRARY.compiled, LIBRARY.reused)
        t0 = time.perf_counter()
        logging.getLogger("optuna").setLevel(logging.ERROR)
        try:
            left, until = remaining, (time.monotonic() + timeout) if timeout else None
            while True:
                ran = sum(mine.values())
                try:
                    study.optimize(objective, n_trials=left, timeout=None if until is None else max(0.0, until - time.monotonic()),
                                   catch=(CandidateFailed,), callbacks=[on_trial], gc_after_trial=False)
                    break
                except ValueError as err:  # two workers popped one queued trial (SQLite): the other finished it first
                    if not str(err).startswith("Cannot tell a "):
                        raise
                    say(f"a trial this process ran had been finished by another worker meanwhile ({err}): its result stands; going on")
                    left -= sum(mine.values()) - ran + 1
                    if stop.requested or left <= 0 or (until is not None and time.monotonic() >= until):
                        break
            if timed:
                log(time_split(timed, time.perf_counter() - t0))
            if attempts:
                again = sum(a > 1 for a in attempts)
                log(f"drift reference: {again} of {len(attempts)} candidates timed again in a slow window "
                    f"({sum(attempts) - len(attempts)} extra rounds of reference, candidate, reference)")
            compiled, reused = LIBRARY.compiled - kernels_before[0], LIBRARY.reused - kernels_before[1]
            if reused:
                log(f"kernels: {compiled} compiled, {reused} reused from earlier builds of this process (the trials were timed on "
                    "those builds: the same machine code, called through the library; the front below is linked again and timed as it ships)")
            if predicted and not stop.requested:
                recheck(final=True)
            if measured_here and not stop.requested and not worker and mine.get("complete", 0):
                from vitune.search.remeasure import time_front_with_baseline

                time_front_with_baseline(study, evaluator, workspace, profile, log=log)
        finally:
            bar.close()
            for t in [tuner, *(tu for _, _, tu in others)]:
                if t is not None:
                    log(f"tuning ({t.mode}, database {t.database_path}): {t.report.line()}")
                    t.close()
    return RunSummary(
        new_complete=mine.get("complete", 0),
        new_failed=mine.get("fail", 0),
        seconds=time.perf_counter() - t0,
        total_complete=count_states(study).get("complete", 0),
        new_pruned=mine.get("pruned", 0),
        interrupted=stop.requested,
    )

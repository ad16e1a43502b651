"""The study loop: create or resume an Optuna study and run trials on it.

Every trial stores, as user attributes, its configuration (``config``), a hash of it
(``config_key``), all metrics (``metrics``) and time split (``timings``); a failed trial stores
``error``. The storage alone is enough to export later or to browse in optuna-dashboard.
The study itself stores ``vitune`` metadata (model reference, target) so a study is never
resumed against a different model.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

from vitune.compression.config import CompressionConfig
from vitune.errors import ConfigError

OBJECTIVES = ("accuracy", "latency_ms")
DIRECTIONS = ("maximize", "minimize")


class CandidateFailed(Exception):
    """Raised inside the objective so Optuna records the trial as FAIL; the study goes on."""


@dataclass
class RunSummary:
    new_complete: int
    new_failed: int
    seconds: float
    total_complete: int


def make_sampler(name: str, seed: int, n_trials: int):
    import optuna

    if name == "nsga2":
        population = max(8, min(50, n_trials // 4))
        return optuna.samplers.NSGAIISampler(population_size=population, seed=seed)
    if name == "tpe":
        import warnings

        with warnings.catch_warnings():  # multivariate/group/constant_liar are marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ConfigError(f"unknown sampler {name!r}")


def open_study(spec, create: bool = True, sampler=None):
    """Load the study named in ``spec`` from its storage (creating it when ``create``)."""
    import optuna

    from vitune.search.storage import make_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = make_storage(spec.storage)
    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    if spec.name not in names and not create:
        raise ConfigError(f"no study {spec.name!r} in {spec.storage} (run 'vitune study run {spec.path}' first)")
    study = optuna.create_study(
        study_name=spec.name,
        storage=storage,
        directions=list(DIRECTIONS),
        load_if_exists=True,
        sampler=sampler,
    )
    if study.directions != [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]:
        raise ConfigError(f"study {spec.name!r} in {spec.storage} was not created by vitune (its objectives differ)")
    return study


def check_metadata(study, spec, ref, profile) -> None:
    meta = study.user_attrs.get("vitune")
    expected = {
        "model": ref.to_dict(), "target": profile.name, "objectives": list(OBJECTIVES),
        "methods": spec.methods.to_dict(), "tuning": spec.target.tuning, "latency": spec.target.latency,
    }
    if meta is None:
        if study.trials:
            raise ConfigError(f"study {spec.name!r} in {spec.storage} has trials but no vitune metadata: it was not created by vitune")
        from vitune import __version__

        study.set_user_attr("vitune", {**expected, "version": __version__, "study_file": str(spec.path)})
        return
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
    recorded = meta.get("methods")
    if recorded is not None and recorded != spec.methods.to_dict():
        changed = sorted(k for k in spec.methods.to_dict() if recorded.get(k) != getattr(spec.methods, k))
        key = changed[0] if changed else "?"
        raise ConfigError(
            f"study {spec.name!r} in {spec.storage} was run with [compression] {key} = {recorded.get(key)!r}, "
            f"the study file now says {getattr(spec.methods, key, None)!r}: results made differently are not "
            "comparable; give the study a new name or storage"
        )


def trial_config(trial) -> CompressionConfig | None:
    text = trial.user_attrs.get("config")
    return None if text is None else CompressionConfig.from_json(text, where=f"trial {trial.number} config")


def baseline_params(space) -> list[dict]:
    """The uncompressed model, then each single knob value applied uniformly to every layer."""
    identity = space.identity_params()
    out = [identity]
    knobs: dict[str, set] = {}
    for name, menu in space.choices:
        if len(menu) > 1 and name != "distill_steps":
            knobs.setdefault(name.rsplit(":", 1)[-1], set()).update(menu)
    for knob, values in sorted(knobs.items()):
        for value in sorted(values, key=str):
            params = dict(identity)
            changed = False
            for name, menu in space.choices:
                if name.endswith(f":{knob}") and value in menu and len(menu) > 1:
                    params[name] = value
                    changed = True
            if changed and params != identity and params not in out:
                out.append(params)
    return out


class Objective:
    """The Optuna objective: sample a config, evaluate it (or reuse an identical one), record."""

    def __init__(self, space, evaluator, study, log=None):
        self.space, self.evaluator, self.study = space, evaluator, study
        self.log = log or (lambda msg: None)

    def _cached(self, key: str):
        import optuna

        for t in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            if t.user_attrs.get("config_key") == key and "metrics" in t.user_attrs:
                return t
        return None

    def __call__(self, trial):
        config = self.space.suggest(trial)
        trial.set_user_attr("config", config.to_json())
        trial.set_user_attr("config_key", config.key)
        trial.set_user_attr("summary", config.summary())
        previous = self._cached(config.key)
        if previous is not None:
            metrics = previous.user_attrs["metrics"]
            trial.set_user_attr("metrics", metrics)
            trial.set_user_attr("cached_from", previous.number)
            return metrics["accuracy"], metrics["latency_ms"]
        result = self.evaluator.evaluate(config)
        trial.set_user_attr("timings", {k: round(v, 4) for k, v in result.timings.items()})
        if not result.ok:
            trial.set_user_attr("error", result.error)
            if result.metrics:
                trial.set_user_attr("metrics", result.metrics)
            raise CandidateFailed(result.error)
        trial.set_user_attr("metrics", result.metrics)
        return result.metrics["accuracy"], result.metrics["latency_ms"]


def count_states(study) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    return counts


def run_study(spec, n_trials: int | None = None, timeout_s: float | None = None, progress: bool = True, log=print) -> RunSummary:
    """Run (or resume) the study of ``spec``; see the CLI's ``vitune study run``."""
    import optuna
    from tqdm.auto import tqdm

    from vitune.costmodels import get_latency_source
    from vitune.models.layers import discover
    from vitune.models.zoo import load_workspace
    from vitune.search.evaluate import Evaluator
    from vitune.search.space import SearchSpace
    from vitune.targets import load_target

    profile = load_target(spec.target.name)
    source = get_latency_source(spec.target.latency, profile)
    if spec.target.latency == "measured":
        from vitune.targets.runner import runner_for

        problem = runner_for(profile).check()  # bounded by the profile's timeout
        if problem:
            raise ConfigError(
                f"{spec.path} [target] latency = \"measured\": target {profile.name} cannot be measured from here "
                f"({problem}); use latency = \"analytical\" (a roofline estimate from the profile's hardware facts, "
                "labelled as such) or \"lut\" / \"learned\" (vitune costmodel fit where the device is reachable)"
            )
    tuner = None
    if spec.target.tuning == "tune" and (profile.runner != "local" or not profile.is_native):
        raise ConfigError(
            f"{spec.path} [target] tuning = \"tune\": target {profile.name} runs on another device and vitune tunes "
            "in-process only; tune where it runs (vitune tune there) and use tuning = \"database\""
        )
    if spec.target.tuning != "off" and hasattr(source, "tuner"):
        from vitune.targets.tuning import Tuner

        tuner = source.tuner = Tuner(profile, spec.target.tuning, spec.target.tuning_trials, spec.target.tuning_budget_s)
    study = open_study(spec)  # fail fast on a bad storage before any heavy work
    workspace = load_workspace(spec.model, spec.data, progress=progress)
    check_metadata(study, spec, workspace.ref, profile)
    space = SearchSpace.build(spec.space, discover(workspace.model), spec.methods)
    predicted = hasattr(source, "bind")
    if predicted:
        source.bind(workspace, space, spec.target.tuning)  # fails fast when no fitted cost model exists
    counts = count_states(study)
    done = counts.get("complete", 0) + counts.get("pruned", 0)
    # Without --n-trials, run until the study file's total is reached; with it, run that many more.
    remaining = max(0, spec.n_trials - done) if n_trials is None else max(0, n_trials)
    timeout = timeout_s if timeout_s is not None else (spec.timeout_s or None)
    if not study.trials:
        for params in baseline_params(space)[: max(1, spec.n_trials // 3)]:
            study.enqueue_trial(params, skip_if_exists=True)
    study.sampler = make_sampler(spec.sampler, spec.seed + len(study.trials), spec.n_trials)
    log(
        f"study {spec.name}: {done} trials done, running {remaining} more on {profile.name} "
        f"({len(space.choices)} knobs, {space.size:.3g} configurations), storage {spec.storage}"
    )
    if remaining == 0:
        return RunSummary(0, 0, 0.0, done)
    evaluator = Evaluator(workspace, profile, source)
    objective = Objective(space, evaluator, study)
    before = count_states(study)
    bar = tqdm(total=remaining, desc=f"{spec.name}", unit="trial", disable=None if progress else True)

    def recheck(final: bool = False):
        from vitune.costmodels.predicted import remeasure_front

        n = remeasure_front(study, evaluator, source, log=bar.write if not bar.disable else log)
        if n and final:
            log(f"re-measured {n} front member(s) on {profile.name}; predicted vs measured in 'vitune study status'")

    def on_trial(study_, trial):
        bar.update(1)
        every = spec.target.remeasure_every
        if predicted and every and trial.state == optuna.trial.TrialState.COMPLETE:
            if count_states(study_).get("complete", 0) % every == 0:
                recheck()
        m = trial.user_attrs.get("metrics", {})
        if trial.state == optuna.trial.TrialState.COMPLETE:
            bar.set_postfix(acc=f"{m.get('accuracy', 0):.3f}", ms=f"{m.get('latency_ms', 0):.3f}")
            if bar.disable and progress:  # not a terminal: one line per trial instead of a bar
                log(
                    f"trial {trial.number}: accuracy {m.get('accuracy', 0):.4f}, latency {m.get('latency_ms', 0):.4f} ms, "
                    f"{trial.user_attrs.get('summary', '')}"
                )
        elif trial.state == optuna.trial.TrialState.FAIL:
            (bar.write if not bar.disable else log)(f"trial {trial.number} failed: {trial.user_attrs.get('error', 'unknown error')}")

    t0 = time.perf_counter()
    logging.getLogger("optuna").setLevel(logging.ERROR)
    try:
        study.optimize(objective, n_trials=remaining, timeout=timeout, catch=(CandidateFailed,), callbacks=[on_trial], gc_after_trial=False)
        if predicted:
            recheck(final=True)
    finally:
        bar.close()
        if tuner is not None:
            log(f"tuning ({tuner.mode}, database {tuner.database_path}): {tuner.report.line()}")
    after = count_states(study)
    return RunSummary(
        new_complete=after.get("complete", 0) - before.get("complete", 0),
        new_failed=after.get("fail", 0) - before.get("fail", 0),
        seconds=time.perf_counter() - t0,
        total_complete=after.get("complete", 0),
    )


def front(study) -> list:
    """Pareto-optimal complete trials, fastest first (duplicates of one configuration once)."""
    seen, out = set(), []
    for t in sorted(study.best_trials, key=lambda t: (t.values[1], -t.values[0], t.number)):
        key = t.user_attrs.get("config_key", t.number)
        if key not in seen:
            seen.add(key)
            out.append(t)
    return out


def uncompressed_trial(study):
    import optuna

    ident = CompressionConfig.identity().key
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if t.user_attrs.get("config_key") == ident:
            return t
    return None


def format_front(study) -> str:
    rows = front(study)
    ref = uncompressed_trial(study)
    checks = study.user_attrs.get("latency_checks", {})
    lines = [f"{'trial':>5}  {'accuracy':>8}  {'latency_ms':>10}  {'speed-up':>8}  {'params':>8}  {'size_kB':>8}  config"]
    if checks:
        lines[0] = lines[0].replace("  config", f"  {'measured_ms':>11}  config")
    ref_ms = ref.values[1] if ref else None
    for t in rows:
        m = t.user_attrs.get("metrics", {})
        speed = f"{ref_ms / t.values[1]:.2f}x" if ref_ms else "-"
        check = ""
        if checks:
            c = checks.get(str(t.number), {})
            check = f"  {c['measured_ms']:>11.4f}" if c.get("measured_ms") is not None else f"  {'-':>11}"
        lines.append(
            f"{t.number:>5}  {t.values[0]:>8.4f}  {t.values[1]:>10.4f}  {speed:>8}  {m.get('params', 0):>8}  "
            f"{m.get('size_bytes', 0) / 1024:>8.1f}{check}  {t.user_attrs.get('summary', '')}"
        )
    if ref is not None:
        m = ref.user_attrs.get("metrics", {})
        lines.append(
            f"{'ref':>5}  {ref.values[0]:>8.4f}  {ref.values[1]:>10.4f}  {'1.00x':>8}  {m.get('params', 0):>8}  "
            f"{m.get('size_bytes', 0) / 1024:>8.1f}  uncompressed (trial {ref.number})"
        )
    sources = {t.user_attrs.get("metrics", {}).get("latency_source", "measured") for t in rows}
    if sources - {"measured"}:
        lines.append(f"latency: {', '.join(sorted(sources))}" + (" (measured_ms: the same candidate measured on the target)" if checks else ""))
    return "\n".join(lines)


def status_text(spec) -> str:
    study = open_study(spec, create=False)
    counts = count_states(study)
    head = (
        f"study {spec.name} ({spec.storage}): {counts.get('complete', 0)} complete, {counts.get('fail', 0)} failed, "
        f"{counts.get('running', 0)} running, {counts.get('pruned', 0)} pruned, {counts.get('waiting', 0)} waiting "
        f"(target {spec.n_trials})"
    )
    if not counts.get("complete"):
        return head + "\nno complete trial yet"
    failures = [t for t in study.get_trials(deepcopy=False) if t.state.name == "FAIL"][-3:]
    tail = "".join(f"\n  failed trial {t.number}: {t.user_attrs.get('error', '?')}" for t in failures)
    return f"{head}{tail}\nPareto front (validated accuracy vs latency):\n{format_front(study)}"


def dump_trial(trial) -> str:
    return json.dumps({"number": trial.number, "values": trial.values, **trial.user_attrs}, indent=2, default=str)

"""A study's results as people read them: the front, the reference, the status text.

A trial's accuracy and latency are read from its recorded ``metrics`` (:func:`accuracy_of`,
:func:`latency_of`), whatever the study's objectives: a Pareto study optimises both, a
constrained study optimises accuracy with latency as a constraint. :func:`front` is the set of
complete trials no other complete trial dominates, restricted in a constrained study to those
within the budget, so nothing over the budget is ever shown as a result or exported.
"""

from __future__ import annotations

from dataclasses import dataclass, field


from vitune.compression.config import CompressionConfig
from vitune.errors import VituneError
from vitune.search.budgets import Budget, budgets_text, fits
from vitune.search.objectives import study_objectives
from vitune.search.records import accuracy_of, has_metrics, latencies_of, latency_of, metrics_of, time_split
from vitune.targets.memory import MIB

__all__ = ["accuracy_of", "latencies_of", "latency_of"]  # re-exported: the front's readers use them from here


def _vec(latency) -> tuple[float, ...]:
    return tuple(latency) if isinstance(latency, (tuple, list)) else (latency,)


def dominated(accuracy: float, latency_ms, points) -> bool:
    """Whether some (accuracy, latency_ms) of ``points`` is at least as accurate and as fast, and
    better in one. ``latency_ms`` is one latency, or a tuple of one per target (then so are the points')."""
    mine = _vec(latency_ms)
    for a, lat in points:
        other = _vec(lat)
        if a >= accuracy and all(o <= x for o, x in zip(other, mine)) and (a > accuracy or any(o < x for o, x in zip(other, mine))):
            return True
    return False


def hypervolume(points, ref_accuracy: float, ref_latency_ms: float) -> float:
    """Area (accuracy x ms) dominated by (accuracy, latency_ms) ``points`` within the box
    accuracy > ``ref_accuracy``, latency < ``ref_latency_ms``: larger is a better front."""
    area, best = 0.0, ref_accuracy
    for lat, acc in sorted((lat, acc) for acc, lat in points if lat < ref_latency_ms and acc > ref_accuracy):
        if acc > best:  # fastest first: each more accurate point adds a slab out to the reference latency
            area += (ref_latency_ms - lat) * (acc - best)
            best = acc
    return area


def study_budgets(study) -> tuple[Budget, ...]:
    """Each target's budgets, the primary first, in a constrained study; () in a Pareto study."""
    meta = study.user_attrs.get("vitune", {})
    if meta.get("mode") != "constrained":
        return ()
    return (Budget.from_meta(meta), *(Budget.from_meta(t) for t in meta.get("also", [])))


def budgets_ms(study) -> tuple[float | None, ...]:
    """The latency budget on each target, the primary first (None: none on that target), in a
    constrained study; () in a Pareto study."""
    return tuple(b.latency_ms for b in study_budgets(study))


def within_budget(trial, budgets, targets) -> bool:
    """Whether ``trial`` is within every budget (one per target of ``targets``; () : always)."""
    return fits(budgets, metrics_of(trial), targets)


def target_names(study) -> tuple[str, ...]:
    meta = study.user_attrs.get("vitune", {})
    return (meta.get("target", "?"), *(t["name"] for t in meta.get("also", [])))


def baseline_of(study, target: str | None = None) -> dict | None:
    """The speed-up reference recorded for ``target`` (default: the primary): the uncompressed
    model in the best runtime that target has (:func:`vitune.targets.peers.measure_baseline`,
    timed when the study started), as ``Baseline.to_dict()``; None if none was timed."""
    name = target or target_names(study)[0]
    base = study.user_attrs.get("baseline", {}).get(name)
    return base if base and base.get("latency_ms") else None


def speed_reference(study, target: str | None = None) -> tuple[float | None, str]:
    """(ms, what it is) against which speed-ups on ``target`` are shown: the recorded baseline
    runtime; in a study from before baselines were timed, the uncompressed trial, labelled so."""
    base = baseline_of(study, target)
    if base is not None:
        return base["latency_ms"], f"the uncompressed model in {base['label']}"
    ref = uncompressed_trial(study)
    if ref is None:
        return None, ""
    names = target_names(study)
    index = names.index(target) if target in names else 0
    lats = latencies_of(ref)
    return (lats[index] if index < len(lats) else None), f"the uncompressed trial {ref.number} in this study's own latency"


def complete_trials(study) -> list:
    import optuna

    return [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)) if has_metrics(t)]


def front(study, keep=None) -> list:
    """Non-dominated complete trials (within the budget of a constrained study; in the study's
    objectives, see :func:`~vitune.search.objectives.study_objectives`), fastest first;
    duplicates of one configuration appear once. ``keep``: only trials it accepts take part (the
    front of those, e.g. of the trials under a memory limit: a member may be dominated by a
    trial that ``keep`` leaves out)."""
    budgets, targets, objectives = study_budgets(study), target_names(study), study_objectives(study)
    trials = [t for t in complete_trials(study) if within_budget(t, budgets, targets) and (keep is None or keep(t))]
    points = [(accuracy_of(t), objectives.costs_of(metrics_of(t))) for t in trials]
    members = [t for t, (a, lat) in zip(trials, points) if not dominated(a, lat, points)]
    seen, out = set(), []
    for t in sorted(members, key=lambda t: (latency_of(t), -accuracy_of(t), t.number)):
        key = t.user_attrs.get("config_key", t.number)
        if key not in seen:
            seen.add(key)
            out.append(t)
    return out


def uncompressed_trial(study):
    """The study's complete trial of the uncompressed model, whatever its ``[compression]``
    methods (they are part of a configuration's key, and change nothing when nothing is compressed)."""
    for t in complete_trials(study):
        try:
            if CompressionConfig.from_json(t.user_attrs.get("config", "")).is_identity:
                return t
        except VituneError:
            continue
    return None


FRONT_TIMING = "front_timing"  # the study attribute remeasure.time_front_with_baseline writes


@dataclass(frozen=True)
class FrontTiming:
    """A study's last side-by-side timing of its front
    (:func:`vitune.search.remeasure.time_front_with_baseline`): ``shipped_ms``, trial number →
    its build as ``vitune apply`` ships it; ``baseline_ms`` and ``label``, the uncompressed model
    in the target's best runtime, timed in the same rounds. Empty (``baseline_ms`` None) if none."""

    shipped_ms: dict[int, float] = field(default_factory=dict)
    baseline_ms: float | None = None
    label: str = ""

    def speedup(self, number: int) -> float | None:
        """How many times faster trial ``number``'s build ran than the baseline (None: not timed)."""
        if not self.baseline_ms or number not in self.shipped_ms:
            return None
        return self.baseline_ms / self.shipped_ms[number]

    def to_dict(self) -> dict:
        return {"baseline_ms": self.baseline_ms, "label": self.label, "shipped_ms": {str(n): ms for n, ms in self.shipped_ms.items()}}


def front_timing(study) -> FrontTiming:
    """The study's :class:`FrontTiming`, read from its ``front_timing`` attribute."""
    doc = study.user_attrs.get(FRONT_TIMING) or {}
    base = doc.get("baseline") or {}
    if not base.get("latency_ms"):
        return FrontTiming()
    return FrontTiming({int(n): float(ms) for n, ms in (base.get("others_ms") or {}).items()}, float(base["latency_ms"]), str(base.get("label", "")))


def format_front(study) -> str:
    rows = front(study)
    ref = uncompressed_trial(study)
    checks = study.user_attrs.get("latency_checks", {})
    lines = [f"{'trial':>5}  {'accuracy':>8}  {'latency_ms':>10}  {'speed-up':>8}  {'params':>8}  {'size_kB':>8}  config"]
    if checks:
        lines[0] = lines[0].replace("  config", f"  {'measured_ms':>11}  config")
    objectives = study_objectives(study)
    peak = "peak_mb" in objectives.costs  # the primary target's peak memory, a column when it is an objective
    if peak:
        lines[0] = lines[0].replace("  config", f"  {'peak_MiB':>8}  config")
    more = target_names(study)[1:]  # one more latency column per extra target
    width = [max(10, len(n) + 3) for n in more]
    lines[0] = lines[0].replace("  speed-up", "".join(f"  {'ms@' + n:>{w}}" for n, w in zip(more, width)) + "  speed-up")
    ref_ms, ref_what = speed_reference(study)
    timing = front_timing(study)  # the front rebuilt and timed beside the baseline
    side = timing.shipped_ms
    if side:
        lines[0] = lines[0].replace("  speed-up", f"  {'shipped_ms':>10}  speed-up")

    def speedup(t) -> str:
        if side:
            s = timing.speedup(t.number)
            return f"{s:.2f}x" if s else "-"
        return f"{ref_ms / latency_of(t):.2f}x" if ref_ms else "-"

    def shipped(t) -> str:
        if not side:
            return ""
        return f"  {side[t.number]:>10.4f}" if t.number in side else f"  {'-':>10}"

    def extra(t) -> str:
        lats = latencies_of(t)[1:]
        return "".join(f"  {lat:>{w}.4f}" for lat, w in zip(lats, width)) + "".join(f"  {'-':>{w}}" for w in width[len(lats):])

    for t in rows:
        m = metrics_of(t)
        speed = speedup(t)
        check = ""
        if checks:
            c = checks.get(str(t.number), {})
            check = f"  {c['measured_ms']:>11.4f}" if c.get("measured_ms") is not None else f"  {'-':>11}"
        lines.append(
            f"{t.number:>5}  {accuracy_of(t):>8.4f}  {latency_of(t):>10.4f}{extra(t)}{shipped(t)}  {speed:>8}  {m.params or 0:>8}  "
            f"{(m.size_bytes or 0) / 1024:>8.1f}{check}{_peak(m) if peak else ''}  {t.user_attrs.get('summary', '')}"
        )
    if ref is not None:
        m = metrics_of(ref)
        speed = speedup(ref)
        lines.append(
            f"{'ref':>5}  {accuracy_of(ref):>8.4f}  {latency_of(ref):>10.4f}{extra(ref)}{shipped(ref)}  {speed:>8}  {m.params or 0:>8}  "
            f"{(m.size_bytes or 0) / 1024:>8.1f}{'  ' + ' ' * 11 if checks else ''}{_peak(m) if peak else ''}  uncompressed (trial {ref.number})"
        )
    meta = study.user_attrs.get("vitune", {})
    if meta.get("latency", "measured") == "measured" and meta.get("tuning") == "off":
        lines.append("latency: untuned TVM kernels ([target] tuning = \"off\", a fallback): the library 'vitune apply' ships "
                     "after 'vitune tune' runs faster, and the search did not rank candidates by it")
    if side:
        lines.append(f"speed-up: shipped_ms (each build as 'vitune apply' ships it) against the uncompressed model in {timing.label}, "
                     f"{timing.baseline_ms:.4f} ms, timed side by side in interleaved rounds at the end of the last run")
        if rows and all(side.get(t.number, 0.0) >= timing.baseline_ms for t in rows):
            lines.append(f"every front member is slower than the uncompressed model in {timing.label} ({timing.baseline_ms:.4f} ms): "
                         "on this target the search found no speed-up")
    elif ref_ms:
        lines.append(f"speed-up: against {ref_what}, {ref_ms:.4f} ms")
        if rows and all(latency_of(t) >= ref_ms for t in rows):
            lines.append(f"every front member is slower than {ref_what} ({ref_ms:.4f} ms): on this target the search found no speed-up")
    sources = {metrics_of(t).latency_source for t in rows}
    if sources - {"measured"}:
        lines.append(f"latency: {', '.join(sorted(sources))}" + (" (measured_ms: the same candidate measured on the target)" if checks else ""))
    if objectives.memory:
        lines.append(f"objectives: {', '.join(objectives.names())} (the front: no other trial is as good in all of them and better in one)")
    budgets = budgets_text(study_budgets(study), target_names(study))
    if budgets:
        lines.append(f"constrained study: only trials within the budget are shown ({budgets})")
    return "\n".join(lines)


def _peak(m) -> str:
    return f"  {m.peak_memory_bytes / MIB:>8.2f}" if m.peak_memory_bytes is not None else f"  {'-':>8}"


def count_states(study) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    return counts


def status_text(spec) -> str:
    from vitune.search.study import open_study

    study = open_study(spec, create=False)
    counts = count_states(study)
    head = (
        f"study {spec.name} ({spec.storage}): {counts.get('complete', 0)} complete, {counts.get('fail', 0)} failed, "
        f"{counts.get('running', 0)} running, {counts.get('pruned', 0)} stopped early, {counts.get('waiting', 0)} waiting "
        f"(target {spec.n_trials})"
    )
    if not counts.get("complete"):
        return head + "\nno complete trial yet"
    failures = [t for t in study.get_trials(deepcopy=False) if t.state.name == "FAIL"][-3:]
    tail = "".join(f"\n  failed trial {t.number}: {t.user_attrs.get('error', '?')}" for t in failures)
    title = "best within the budget" if study_budgets(study) else "Pareto front (validated accuracy vs latency)"
    timed = [t.user_attrs.get("timings", {}) for t in study.get_trials(deepcopy=False) if t.state.name in ("COMPLETE", "PRUNED")]
    split = time_split(timed)
    return f"{head}{tail}\n{title}:\n{format_front(study)}" + (f"\n{split}" if split != "no trial timed" else "")

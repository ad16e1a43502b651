"""Pick configurations from a study's Pareto front and write them as JSON.

Picks:

* ``best`` — the most accurate front member, optionally under ``max_latency_ms``
  (ties: the faster one);
* ``knee`` — the member farthest from the straight line joining the front's two extremes,
  with accuracy and latency scaled to [0, 1] over the front;
* ``pareto`` — every front member;
* ``fastest`` — the fastest front member whose validation accuracy is within ``max_drop``
  (absolute, 0.01 = one point) of the uncompressed model's (the study's uncompressed trial);
* ``trial`` — one complete trial, by number (on the front or not).

Memory limits (``max_model_mb``: the model's stored bytes, ``max_peak_mb``: the primary
target's build at batch 1, both in MiB) narrow every pick but ``trial`` to the front of the
trials within them: a smaller configuration that a larger one dominates on accuracy and latency
becomes a member when the larger one is over the limit.

A record holds the model reference (name, checkpoint hash, how to rebuild it), the data it
was scored on, the target, the per-layer configuration, ``metrics`` (``accuracy``,
``latency_ms``, ``params``, ``size_bytes``, ...) and library versions.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from vitune.errors import ConfigError
from vitune.search.front import FrontTiming, accuracy_of, latency_of
from vitune.search.records import metrics_of
from vitune.targets.memory import MIB
from vitune.versions import versions

FORMAT = "vitune.export/1"
FORMAT_PARETO = "vitune.export-pareto/1"
PICKS = ("best", "knee", "pareto", "fastest", "trial")


def pick_best(front: list, max_latency_ms: float | None = None):
    members = [t for t in front if max_latency_ms is None or latency_of(t) <= max_latency_ms]
    if not members:
        fastest = min(latency_of(t) for t in front)
        raise ConfigError(f"no front member has latency <= {max_latency_ms} ms; the fastest is {fastest:.4f} ms")
    return max(members, key=lambda t: (accuracy_of(t), -latency_of(t)))


def pick_knee(front: list, max_latency_ms: float | None = None):
    members = [t for t in front if max_latency_ms is None or latency_of(t) <= max_latency_ms]
    if not members:
        return pick_best(front, max_latency_ms)  # raises with the message
    return members[knee_index([(accuracy_of(t), latency_of(t)) for t in members])]


def pick_fastest(front: list, reference_accuracy: float, max_drop: float, max_latency_ms: float | None = None):
    """The fastest member with accuracy >= ``reference_accuracy - max_drop`` (ties: the more accurate)."""
    floor = reference_accuracy - max_drop
    members = [t for t in front if accuracy_of(t) >= floor - 1e-12 and (max_latency_ms is None or latency_of(t) <= max_latency_ms)]
    if not members:
        best = max(accuracy_of(t) for t in front)
        raise ConfigError(f"no front member is within {max_drop:g} of the uncompressed accuracy {reference_accuracy:.4f} "
                          f"(at least {floor:.4f}){'' if max_latency_ms is None else f' under {max_latency_ms} ms'}; "
                          f"the most accurate is {best:.4f}")
    return min(members, key=lambda t: (latency_of(t), -accuracy_of(t)))


def knee_index(points: list[tuple[float, float]]) -> int:
    """Index of the knee of (accuracy, latency_ms) front points: the one farthest above the chord
    joining the two extremes, both axes scaled to [0, 1] (two points or fewer: the most accurate)."""
    if len(points) <= 2:
        return max(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    accs, lats = [a for a, _ in points], [lat for _, lat in points]
    a_lo, l_lo = min(accs), min(lats)
    span_a, span_l = (max(accs) - a_lo) or 1.0, (max(lats) - l_lo) or 1.0
    pts = [((lat - l_lo) / span_l, (a - a_lo) / span_a) for a, lat in points]  # x: 0 fastest, y: 1 best
    (x0, y0), (x1, y1) = min(pts), max(pts)
    norm = ((x1 - x0) ** 2 + (y1 - y0) ** 2) ** 0.5 or 1.0

    def distance(p):  # above the chord (better than linear trade-off) counts positive
        return ((x1 - x0) * (p[1] - y0) - (y1 - y0) * (p[0] - x0)) / norm

    return max(range(len(points)), key=lambda i: (distance(pts[i]), points[i][0]))


def trial_record(trial, spec, study_meta: dict, baseline: dict | None = None, timing: FrontTiming | None = None) -> dict:
    """``baseline``: the study's speed-up reference on the primary target (``Baseline.to_dict()``),
    recorded with ``speedup_vs_baseline``; ``timing``: the study's :class:`~vitune.search.front.FrontTiming`,
    whose side-by-side figure is the speed-up of a member it timed (``speedup_timed_side_by_side``;
    the two latencies it divides in ``side_by_side``)."""
    from vitune.targets import load_target

    profile = load_target(spec.target.name)
    side = timing.speedup(trial.number) if timing is not None else None  # rebuilt and timed beside the baseline
    speedup = baseline["latency_ms"] / latency_of(trial) if baseline and baseline.get("latency_ms") and latency_of(trial) else None
    return {
        "format": FORMAT,
        "study": {"name": spec.name, "storage": spec.storage, "file": str(spec.path), "trial": trial.number},
        "model": study_meta.get("model", {}),
        "data": {"source": spec.data.source, "root": spec.data.root, "fractions": dict(spec.data.fractions), "seed": spec.data.seed},
        "target": {**profile.describe(), "latency_source": spec.target.latency},
        "also_targets": [{**load_target(t.name).describe(), "latency_source": t.latency} for t in spec.also],
        "config": json.loads(trial.user_attrs["config"]),
        "summary": trial.user_attrs.get("summary", ""),
        "metrics": {
            "accuracy": accuracy_of(trial),
            "latency_ms": latency_of(trial),
            "split": "val",
            **{k: v for k, v in metrics_of(trial).to_dict().items() if k not in ("accuracy", "latency_ms")},
            "speedup_vs_baseline": side if side is not None else speedup,
            "speedup_timed_side_by_side": side is not None,
        },
        "baseline": baseline,
        # the figures speedup_vs_baseline divides when it comes from the front's side-by-side rounds
        "side_by_side": None if side is None else {"baseline_ms": timing.baseline_ms, "label": timing.label,
                                                   "shipped_ms": timing.shipped_ms[trial.number]},
        "versions": versions(),
    }


def memory_limit(max_model_mb: float | None = None, max_peak_mb: float | None = None):
    """``(keep, why)``: a predicate on trials for :func:`vitune.search.front.front` (None when no
    limit is given) and the limits in words. A trial whose figure was not recorded (a study
    from before peak memory was measured) does not pass a limit on it."""
    limits = [(key, mb, label) for key, mb, label in (("size_bytes", max_model_mb, "model"), ("peak_memory_bytes", max_peak_mb, "peak memory"))
              if mb is not None]
    if not limits:
        return None, ""
    for _, mb, label in limits:
        if mb <= 0:
            raise ConfigError(f"the {label} limit must be positive, got {mb:g} MiB")

    def keep(t) -> bool:
        figures = metrics_of(t)
        return all(getattr(figures, key) is not None and getattr(figures, key) <= mb * MIB for key, mb, _ in limits)

    return keep, " and ".join(f"{label} <= {mb:g} MiB" for _, mb, label in limits)


def export(spec, pick: str, out: Path, max_latency_ms: float | None = None, max_drop: float = 0.01, trial: int | None = None,
           max_model_mb: float | None = None, max_peak_mb: float | None = None) -> dict:
    from vitune.search.front import baseline_of, complete_trials, front, front_timing, uncompressed_trial
    from vitune.search.study import open_study

    if pick not in PICKS:
        raise ConfigError(f"unknown pick {pick!r} (expected {', '.join(PICKS)})")
    if (pick == "trial") != (trial is not None):
        raise ConfigError("--trial N exports trial N: give it alone (it is its own pick)")
    keep, limits = memory_limit(max_model_mb, max_peak_mb)
    if keep is not None and pick == "trial":
        raise ConfigError("--trial N exports trial N whatever its size: leave the memory limits out")
    study = open_study(spec, create=False)
    members = front(study, keep)
    if not members:
        if keep is not None and front(study):
            sizes = [metrics_of(t) for t in complete_trials(study)]
            smallest = min((m.size_bytes for m in sizes if m.size_bytes is not None), default=None)
            lowest = min((m.peak_memory_bytes for m in sizes if m.peak_memory_bytes is not None), default=None)
            seen = ", ".join(f"the {what} is {v / MIB:.3f} MiB" for what, v in (("smallest model", smallest), ("lowest peak", lowest))
                             if v is not None)
            raise ConfigError(f"study {spec.name!r} has no complete trial with {limits}" + (f"; {seen}" if seen else ""))
        raise ConfigError(f"study {spec.name!r} has no complete trial yet: nothing to export")
    meta = study.user_attrs.get("vitune", {})
    base = baseline_of(study)
    timing = front_timing(study)
    if pick == "pareto":
        chosen = [t for t in members if max_latency_ms is None or latency_of(t) <= max_latency_ms]
        doc = {"format": FORMAT_PARETO, "members": [trial_record(t, spec, meta, base, timing) for t in chosen]}
    else:
        if pick == "trial":
            done = {t.number: t for t in complete_trials(study)}
            if trial not in done:
                raise ConfigError(f"study {spec.name!r} has no complete trial {trial} (complete: {', '.join(map(str, sorted(done))) or 'none'})")
            chosen_trial = done[trial]
        elif pick == "fastest":
            ref = uncompressed_trial(study)
            if ref is None:
                raise ConfigError(f"study {spec.name!r} has no complete uncompressed trial to measure the accuracy drop against")
            chosen_trial = pick_fastest(members, accuracy_of(ref), max_drop, max_latency_ms)
        else:
            chosen_trial = (pick_best if pick == "best" else pick_knee)(members, max_latency_ms)
        doc = trial_record(chosen_trial, spec, meta, base, timing)
        doc["pick"] = {"mode": pick, "max_latency_ms": max_latency_ms, **({"max_drop": max_drop} if pick == "fastest" else {}),
                       **({"trial": trial} if pick == "trial" else {}),
                       **({"max_model_mb": max_model_mb, "max_peak_mb": max_peak_mb} if keep is not None else {})}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    return doc


def load_record(path: Path, member: int | None = None) -> dict:
    """Read an export; for a Pareto file pick ``member`` (index into its members)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"export file {str(path)!r} does not exist")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON ({err})") from None
    fmt = doc.get("format") if isinstance(doc, dict) else None
    if fmt == FORMAT_PARETO:
        members = doc.get("members", [])
        if member is None:
            raise ConfigError(f"{path} holds {len(members)} Pareto members: choose one with --member 0..{len(members) - 1}")
        if not 0 <= member < len(members):
            raise ConfigError(f"{path}: --member {member} is out of range 0..{len(members) - 1}")
        return members[member]
    if fmt != FORMAT:
        raise ConfigError(f"{path}: not a vitune export (format {fmt!r}, expected {FORMAT!r})")
    for key in ("model", "data", "target", "config", "metrics"):
        if key not in doc:
            raise ConfigError(f"{path}: missing key {key!r}")
    return doc


__all__ = ["export", "load_record", "memory_limit", "pick_best", "pick_fastest", "pick_knee", "trial_record", "asdict"]

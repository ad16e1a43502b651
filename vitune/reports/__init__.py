"""Study reports: ``vitune study show`` (text) and ``vitune report`` (HTML and PNG).

Contract of :func:`build_report`: given a study file whose study has trials, it writes into
``out``:

* ``index.html`` — one self-contained page (figures embedded, nothing loaded from elsewhere);
* ``pareto.png``, ``recipes.png``, ``history.png`` and, when they apply, ``importance.png``
  (needs 4 complete trials) and ``latency_checks.png`` (a study with predicted latency whose
  front was re-measured);
* ``report.json`` — the figures (file, title, pixel size), the front and the picked trials.

It reads the storage only; it never changes the study. matplotlib is imported only here.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from vitune.errors import ConfigError
from vitune.reports.view import StudyView, TrialRow, describe, format_table, load_view, recipe_table


@dataclass(frozen=True)
class Report:
    folder: Path
    html: Path
    figures: tuple  # of vitune.reports.figures.Figure
    notes: dict  # figure → why it is missing


def picks(view: StudyView) -> dict[str, TrialRow]:
    """The front members worth a recipe: the knee and the most accurate compressed one."""
    from vitune.search.export import knee_index

    compressed = [t for t in view.front if view.reference is None or t.number != view.reference.number]
    if not compressed:
        return {}
    knee = view.front[knee_index([(t.accuracy, t.latency_ms) for t in view.front])]
    best = max(compressed, key=lambda t: (t.accuracy, -t.latency_ms))
    out = {"the knee of the front": knee} if knee in compressed else {}
    if best is not knee or not out:
        out["the most accurate compressed configuration"] = best
    return out


def build_report(spec, out: str | Path) -> Report:
    from vitune.reports import figures as F  # matplotlib's object API on the Agg canvas: no backend is switched
    from vitune.reports.html import render
    from vitune.reports.view import param_importances

    view = load_view(spec)
    if not view.trials:
        raise ConfigError(f"study {spec.name!r} in {spec.storage} has no trials yet: run 'vitune study run {spec.path}' first")
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    scores, why = param_importances(spec)
    figs = {"pareto": F.pareto(view, folder), "memory": F.memory(view, folder), "recipes": F.recipes(view, folder), "history": F.history(view, folder),
            "latency_checks": F.latency_checks(view, folder), "importance": F.importance(scores, folder)}
    notes = {"importance": why, "memory": "No trial recorded its memory figures.",
             "latency_checks": "Latency was measured on the target for every candidate: no cost model was used."
             if view.meta.get("latency", "measured") == "measured" else "The front has not been re-measured on the target yet."}
    chosen = picks(view)
    page = folder / "index.html"
    page.write_text(render(view, figs, notes, chosen, scores, folder, str(spec.path)), encoding="utf-8")
    made = tuple(f for f in figs.values() if f is not None)
    doc = {
        "study": view.name, "storage": view.storage, "targets": list(view.targets), "mode": view.mode, "budgets_ms": list(view.budgets_ms),
        "budgets": [b.to_meta() for b in view.budgets],
        "counts": view.counts(), "figures": [asdict(f) for f in made],
        "missing": {k: notes[k] for k, f in figs.items() if f is None},
        "front": [_row_doc(view, t) for t in view.front],
        "reference": _row_doc(view, view.reference) if view.reference else None,
        "speed_reference": {"latency_ms": view.speed_reference()[0], "what": view.speed_reference()[1]},
        # the front and the uncompressed model rebuilt and timed beside the baseline at the end of
        # the last run: the rows' speed-ups where their trial is in shipped_ms
        "side_by_side": view.side.to_dict(),
        "picks": {label: t.number for label, t in chosen.items()}, "importance": scores,
    }
    (folder / "report.json").write_text(json.dumps(doc, indent=1) + "\n")
    return Report(folder, page, made, doc["missing"])


def _row_doc(view: StudyView, t: TrialRow) -> dict:
    return {"trial": t.number, "accuracy": t.accuracy, "latency_ms": t.latency_ms, "latencies_ms": t.latencies, "speedup": view.speedup(t), "params": t.params,
            "size_bytes": t.size_bytes, "peak_memory_bytes": t.peak_memory_bytes, "origin": t.origin, "summary": t.summary, "recipe": t.recipe}


def show_text(spec, trial: int | None = None) -> str:
    """What ``vitune study show`` prints: the front table, the reference, one trial's recipe."""
    from vitune.search.front import format_front
    from vitune.search.study import open_study

    view = load_view(spec)
    lines = [f"study {view.name} ({view.storage}) on {', '.join(view.targets)}: "
             + view.counts_text()]
    if not view.front:
        return "\n".join(lines + ["no complete trial yet"])
    lines += [f"best within the budget ({view.budgets_text()}):" if view.mode == "constrained" else "Pareto front (validated accuracy vs latency):",
              format_front(open_study(spec, create=False))]
    if trial is not None:
        row, why = view.trial(trial), "chosen with --trial"
    else:
        chosen = picks(view)
        if not chosen:
            return "\n".join(lines + ["the front holds only the uncompressed model: no recipe to show"])
        why, row = next(iter(chosen.items()))
    lines += ["", f"recipe of {describe(view, row)}, {why}:"]
    if row.state != "complete":
        lines.append(f"  (this trial is {row.state}{': ' + row.reason if row.reason else ''})")
    header, rows = recipe_table(row)
    lines.append(format_table(header, rows))
    lines.append("cells: weight precision, then rank kept ('full' or r<rank>); attn/mlp: share of heads/neurons pruned")
    return "\n".join(lines)

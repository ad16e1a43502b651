"""One self-contained HTML page for a study: tables, and the figures embedded as data URIs.

The page loads nothing from anywhere (no scripts, fonts or style sheets from the network; the
figures ride inside it), so it opens offline in any browser; the PNGs are also written beside it.
"""

from __future__ import annotations

import base64
import html
import time
from pathlib import Path

from vitune.reports.figures import Figure
from vitune.reports.view import StudyView, TrialRow, recipe_table

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, Segoe UI, sans-serif; margin: 2em auto; max-width: 1250px; color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .5em 0 1em; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f4f6f8; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.ref td { background: #fff8dc; } figure { margin: 1em 0; } figcaption { color: #555; font-size: 13px; }
img { max-width: 100%; height: auto; border: 1px solid #eee; } code { background: #f4f6f8; padding: 1px 4px; }
.note { color: #555; }
"""


def _e(value) -> str:
    return html.escape(str(value))


def _table(header: list[str], rows: list[list], numeric: set[int] = frozenset(), classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        cells = "".join(f'<td class="num">{_e(c)}</td>' if j in numeric else f"<td>{_e(c)}</td>" for j, c in enumerate(row))
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _num(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def front_rows(view: StudyView, rows: list[TrialRow]) -> list[list[str]]:
    out = []
    for t in rows:
        speed = view.speedup(t)
        more = [_num(t.latencies.get(n), ".4f") for n in view.targets[1:]]
        out.append([t.number, _num(t.accuracy, ".4f"), _num(t.latency_ms, ".4f"), *more, f"{speed:.2f}x" if speed else "-",
                    _num(t.params, ","), _num(t.size_bytes and t.size_bytes / 1024, ".1f"), t.origin, t.summary])
    return out


def front_header(view: StudyView) -> list[str]:
    more = [f"ms on {n}" for n in view.targets[1:]]
    return ["trial", "accuracy", f"latency (ms{' on ' + view.targets[0] if more else ''})", *more, "speed-up", "params", "size (kB)", "origin", "configuration"]


def _figure(fig: Figure, folder: Path) -> str:
    data = base64.b64encode((folder / fig.name).read_bytes()).decode()
    return (f'<figure id="{_e(fig.name[:-4])}"><img src="data:image/png;base64,{data}" width="{fig.width}" height="{fig.height}" '
            f'alt="{_e(fig.title)}" data-file="{_e(fig.name)}"><figcaption><b>{_e(fig.title)}.</b> {_e(fig.caption)} '
            f'(<code>{_e(fig.name)}</code>, {fig.width}&times;{fig.height} px)</figcaption></figure>')


def render(view: StudyView, figures: dict[str, Figure | None], notes: dict[str, str], picks: dict[str, TrialRow],
           importances: dict[str, dict[str, float]], folder: Path, study_file: str) -> str:
    meta = view.meta
    model = meta.get("model", {})
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>vitune report: {_e(view.name)}</title>"
             f"<link rel=\"icon\" href=\"data:,\"><style>{STYLE}</style></head><body>",
             f"<h1>vitune study <code>{_e(view.name)}</code></h1>"]
    facts = [
        ["model", f"{model.get('name', '?')} (checkpoint {str(model.get('checkpoint_sha256', '?'))[:12]})"],
        ["target", ", ".join(view.targets) + f" (latency {meta.get('latency', 'measured')}, tuning {meta.get('tuning', 'off')})"],
        ["mode", view.mode + (f", budgets {view.budgets_text()}" if view.mode == "constrained" else "")],
        ["trials", view.counts_text()],
        ["storage", view.storage],
        ["study file", study_file],
        ["generated", time.strftime("%Y-%m-%d %H:%M:%S %Z") + f" by vitune {meta.get('version', '')}"],
    ]
    parts.append(_table(["", ""], facts))

    header = front_header(view)
    numeric = set(range(len(header) - 2))  # every column but origin and configuration
    parts.append("<h2>Front</h2>")
    if view.front:
        rows = front_rows(view, list(view.front))
        classes = [""] * len(rows)
        if view.reference is not None:
            rows.append(front_rows(view, [view.reference])[0][:-2] + ["reference", "uncompressed"])
            classes.append("ref")
        parts.append(_table(header, rows, numeric, classes))
        if view.mode == "constrained":
            parts.append(f"<p class=\"note\">Constrained study: only trials within the budget ({_e(view.budgets_text())}) are listed.</p>")
    else:
        parts.append("<p class=\"note\">No complete trial yet.</p>")
    for key in ("pareto", "memory", "recipes"):
        if figures.get(key):
            parts.append(_figure(figures[key], folder))

    parts.append("<h2>Recipes</h2>")
    for label, row in picks.items():
        recipe_header, table = recipe_table(row)
        parts.append(f"<h3>{_e(label)}: trial {row.number}</h3><p>accuracy {_num(row.accuracy, '.4f')}, latency {_num(row.latency_ms, '.4f')} ms"
                     + (f", {view.speedup(row):.2f}x the speed of {_e(view.speed_reference()[1])}" if view.speedup(row) else "") + f"; {_e(row.summary)}</p>")
        parts.append(_table(recipe_header, table))
        parts.append(f"<p class=\"note\">Ship it: <code>vitune study export {_e(study_file)} --pick {'knee' if 'knee' in label else 'best'} --out best.json</code> "
                     "then <code>vitune apply best.json --out DIR</code>.</p>")
    if not picks:
        parts.append("<p class=\"note\">No compressed configuration on the front yet.</p>")

    if view.baselines:
        parts.append("<h2>Uniform baselines</h2><p>The same option on every layer (warm start).</p>")
        parts.append(_table(header, front_rows(view, sorted(view.baselines, key=lambda t: t.latency_ms)), numeric))

    parts.append("<h2>Latency: predicted vs measured</h2>")
    if figures.get("latency_checks"):
        parts.append(_figure(figures["latency_checks"], folder))
        parts.append(_table(["trial", "predicted (ms)", "measured (ms)", "error"],
                            [[c["trial"], _num(c.get("predicted_ms"), ".4f"), _num(c.get("measured_ms"), ".4f"),
                              f"{100 * (c['predicted_ms'] / c['measured_ms'] - 1):+.1f} %" if c.get("measured_ms") and c.get("predicted_ms") else c.get("error") or "-"]
                             for c in view.checks], {0, 1, 2}))
    else:
        parts.append(f"<p class=\"note\">{_e(notes.get('latency_checks', ''))}</p>")

    parts.append("<h2>History</h2>")
    if figures.get("history"):
        parts.append(_figure(figures["history"], folder))
    parts.append("<h2>Which layer choices matter most</h2>")
    if figures.get("importance"):
        parts.append(_figure(figures["importance"], folder))
        for objective, scores in importances.items():
            parts.append(f"<h3>for {_e(objective)}</h3>" + _table(["parameter", "importance"], [[k, f"{v:.3f}"] for k, v in scores.items()], {1}))
    else:
        parts.append(f"<p class=\"note\">{_e(notes.get('importance', ''))}</p>")

    troubled = [t for t in view.trials if t.state in ("fail", "pruned")]
    if troubled:
        parts.append("<h2>Failed and stopped-early trials</h2>")
        parts.append(_table(["trial", "state", "reason"], [[t.number, "failed" if t.state == "fail" else "stopped early", t.reason] for t in troubled[-50:]], {0}))
    parts.append("</body></html>")
    return "\n".join(parts)

"""The report's figures, drawn with matplotlib's object API (no pyplot state, no display needed).

Every function takes a :class:`~vitune.reports.view.StudyView`, writes one PNG of a fixed pixel
size and returns a :class:`Figure` record naming the file, its size and a caption. Sizes are set
by the figure (inches × ``DPI``), never cropped afterwards, so the HTML can state them.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path

from vitune.reports.view import PRECISION_BITS, StudyView
from vitune.search.front import hypervolume
from vitune.targets.memory import MIB

DPI = 100
FRONT = "#c0392b"


@dataclass(frozen=True)
class Figure:
    name: str  # file name in the report folder
    title: str
    caption: str
    width: int  # pixels
    height: int


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; ValueError when the file is not a PNG."""
    head = Path(path).read_bytes()[:24]
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise ValueError(f"{path} is not a PNG image")
    return struct.unpack(">II", head[16:24])


def _new(width: int, height: int, rows: int = 1, cols: int = 1, **kw):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False, **kw)
    return fig, axes


def _save(fig, out: Path, name: str, title: str, caption: str) -> Figure:
    path = out / name
    fig.savefig(path, dpi=DPI, format="png")
    width, height = png_size(path)
    return Figure(name, title, caption, width, height)


def _staircase(points) -> tuple[list[float], list[float]]:
    """(xs, ys) of the line through ``points`` ((x, accuracy), sorted by x) that holds the best
    accuracy reached at each x or less."""
    xs: list[float] = []
    ys: list[float] = []
    best = -1.0
    for x, accuracy in points:
        best = max(best, accuracy)
        if xs:
            xs.append(x)
            ys.append(ys[-1])
        xs.append(x)
        ys.append(best)
    return xs, ys


def pareto(view: StudyView, out: Path) -> Figure:
    """Accuracy vs latency, one panel per target: every complete trial, the front, the uniform
    baselines and the uncompressed model."""
    n = len(view.targets)
    fig, axes = _new(max(900, 600 * n), 600, 1, n)
    budgets = dict(zip(view.targets, view.budgets_ms))
    for ax, target in zip(axes[0], view.targets):
        def lat(t):
            return t.latencies.get(target)

        done = [t for t in view.complete if lat(t) is not None]
        ax.scatter([lat(t) for t in done], [t.accuracy for t in done], s=14, c="#9aa5b1", label=f"trials ({len(done)})", zorder=1)
        front = sorted((t for t in view.front if lat(t) is not None), key=lat)
        if front:  # the best accuracy the front reaches at each latency on this target
            ax.plot(*_staircase([(lat(t), t.accuracy) for t in front]), color=FRONT, lw=1.5, zorder=2)
            ax.scatter([lat(t) for t in front], [t.accuracy for t in front], s=36, c=FRONT, label=f"front ({len(front)})", zorder=3)
        base = [t for t in view.baselines if lat(t) is not None]
        if base:
            ax.scatter([lat(t) for t in base], [t.accuracy for t in base], marker="^", s=44, facecolors="none",
                       edgecolors="#2c3e50", label=f"uniform baselines ({len(base)})", zorder=4)
        ref = view.reference
        if ref and lat(ref) is not None:
            ax.scatter([lat(ref)], [ref.accuracy], marker="*", s=220, c="#f1c40f", edgecolors="black",
                       label=f"uncompressed ({lat(ref):.3f} ms, {ref.accuracy:.3f})", zorder=5)
        ref_ms, ref_what = view.speed_reference(target)
        if ref_ms:  # the speed-up reference: the uncompressed model in the best runtime the target has
            ax.axvline(ref_ms, color="#16a085", ls="-.", lw=1.2, label=f"{ref_what.replace('the uncompressed model in ', 'uncompressed in ')} ({ref_ms:.3f} ms)")
            for factor in (2, 3):
                ax.axvline(ref_ms / factor, color="#7f8c8d", ls=":", lw=1)
                ax.annotate(f"{factor}x", (ref_ms / factor, 0.02), xycoords=("data", "axes fraction"), fontsize=8, color="#7f8c8d")
        if budgets.get(target) is not None:
            ax.axvline(budgets[target], color=FRONT, ls="--", lw=1, label=f"budget {budgets[target]:g} ms")
        ax.set_xlabel(f"latency on {target} (ms, {view.source_of(target)})")
        ax.set_ylabel("validated top-1 accuracy")
        ax.set_title(f"{view.name} on {target}")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    caption = ("Every complete trial (grey), the Pareto front (red; in a constrained study, the best within the budget), "
               "uniform baselines (the same option on every layer) and the uncompressed model (star); the dash-dotted line is the "
               "speed-up reference (the uncompressed model in the best runtime the target has), dotted lines mark 2x and 3x its speed.")
    return _save(fig, out, "pareto.png", "Accuracy vs latency", caption)


def memory(view: StudyView, out: Path) -> Figure | None:
    """Accuracy vs the model's stored size and vs the primary target's peak run-time memory:
    every complete trial, the front of each panel's two figures, the uncompressed model and the
    memory budgets of a constrained study."""
    panels = [("model size (MiB, stored dtypes)", lambda t: t.size_bytes, "model_mb"),
              (f"peak memory on {view.targets[0]} (MiB, batch 1: weights + live buffers)", lambda t: t.peak_memory_bytes, "peak_mb")]
    panels = [p for p in panels if any(p[1](t) is not None for t in view.complete)]
    if not panels:
        return None
    fig, axes = _new(600 * len(panels), 560, 1, len(panels))
    budget = view.budgets[0] if view.budgets else None
    for ax, (label, figure, key) in zip(axes[0], panels):
        done = sorted((t for t in view.complete if figure(t) is not None), key=lambda t: (figure(t), -t.accuracy))
        xs = [figure(t) / MIB for t in done]
        ax.scatter(xs, [t.accuracy for t in done], s=14, c="#9aa5b1", label=f"trials ({len(done)})", zorder=1)
        if done:  # the best accuracy reached at each size or less: this panel's own front
            ax.plot(*_staircase([(figure(t) / MIB, t.accuracy) for t in done]), color=FRONT, lw=1.5,
                    label="best accuracy at this memory or less", zorder=2)
        on_front = [t for t in view.front if figure(t) is not None]
        if on_front:
            ax.scatter([figure(t) / MIB for t in on_front], [t.accuracy for t in on_front], s=36, facecolors="none", edgecolors=FRONT,
                       label=f"study front ({len(on_front)})", zorder=3)
        ref = view.reference
        if ref and figure(ref) is not None:
            ax.scatter([figure(ref) / MIB], [ref.accuracy], marker="*", s=220, c="#f1c40f", edgecolors="black",
                       label=f"uncompressed ({figure(ref) / MIB:.3g} MiB)", zorder=5)
        limit = getattr(budget, key, None) if budget is not None else None
        if limit is not None:
            ax.axvline(limit, color=FRONT, ls="--", lw=1, label=f"budget {limit:g} MiB")
        ax.set_xlabel(label)
        ax.set_ylabel("validated top-1 accuracy")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    caption = ("Accuracy against memory: the model's stored size (every tensor at its stored dtype; a tuned CPU build holds weight-only int8 "
               "layers at fp32) and, where the build's memory plan was "
               "read, its peak memory at batch 1 on the primary target. The line is the best accuracy reached at each amount of "
               "memory or less; hollow circles are the study's front (in its own objectives).")
    return _save(fig, out, "memory.png", "Accuracy vs memory", caption)


def _encode(knob: str, value) -> tuple[float, str]:
    """(compression strength in [0, 1], cell label) of one knob value."""
    if knob == "precision":
        bits = PRECISION_BITS.get(str(value), 32)
        return 1.0 - math.log2(bits / 4) / 3.0, str(value)
    v = float(value)
    if knob == "rank_fraction":
        return 1.0 - v, "full" if v >= 1.0 else f"{v:g}"
    return v, "-" if v == 0 else f"-{100 * v:.0f}%"


def recipes(view: StudyView, out: Path, limit: int = 24) -> Figure:
    """The per-layer recipe of the front's members as heat maps (member × layer), one per knob."""
    members = sorted(view.front, key=lambda t: t.latency_ms)[:limit]
    knobs = [k for k in ("precision", "rank_fraction", "prune_heads", "prune_mlp") if k in view.units]
    widest = max((len(view.units[k]) for k in knobs), default=1)
    width = max(900, 160 + 46 * widest)
    heights = [70 + 20 * max(1, len(members)) for _ in knobs] or [200]
    fig, axes = _new(width, 60 + sum(heights), max(1, len(knobs)), 1, gridspec_kw={"height_ratios": heights})
    titles = {"precision": "weight precision", "rank_fraction": "rank (share of full rank kept)",
              "prune_heads": "attention heads pruned", "prune_mlp": "MLP neurons pruned"}
    for ax, knob in zip(axes[:, 0], knobs):
        units = view.units[knob]
        grid = [[_encode(knob, t.recipe.get(u, {}).get(knob, "fp32" if knob == "precision" else (1.0 if knob == "rank_fraction" else 0.0)))
                 for u in units] for t in members]
        ax.imshow([[c[0] for c in row] for row in grid] or [[0.0]], cmap="YlOrRd", vmin=0.0, vmax=1.0, aspect="auto")
        small = len(units) > 24
        for i, row in enumerate(grid):
            for j, (strength, label) in enumerate(row):
                ax.text(j, i, label, ha="center", va="center", fontsize=5 if small else 7, color="white" if strength > 0.6 else "black")
        ax.set_xticks(range(len(units)), [u.replace("blocks.", "b") for u in units], rotation=90, fontsize=7)
        ax.set_yticks(range(len(members)), [f"#{t.number} {t.latency_ms:.3f} ms {t.accuracy:.3f}" for t in members], fontsize=7)
        ax.set_title(titles[knob], fontsize=9, loc="left")
    if not knobs:
        axes[0, 0].text(0.5, 0.5, "no per-layer knob was searched", ha="center", va="center")
        axes[0, 0].set_axis_off()
    caption = (f"One row per front member (trial, latency, accuracy), fastest first{' (the first ' + str(limit) + ')' if len(view.front) > limit else ''}; "
               "one column per layer; darker cells are compressed harder.")
    return _save(fig, out, "recipes.png", "Per-layer recipes of the front", caption)


def history(view: StudyView, out: Path) -> Figure:
    """Accuracy and latency of each trial in order, and the front's hypervolume (a constrained
    study: the best accuracy within the budget) as the study went on."""
    fig, axes = _new(1200, 420, 1, 3)
    done = sorted(view.complete, key=lambda t: t.number)
    stopped = [t for t in view.trials if t.state == "pruned" and t.accuracy is not None]
    failed = [t.number for t in view.trials if t.state == "fail"]
    ax = axes[0, 0]
    ax.scatter([t.number for t in done], [t.accuracy for t in done], s=12, c="#2c3e50", label="complete")
    if stopped:
        ax.scatter([t.number for t in stopped], [t.accuracy for t in stopped], s=12, marker="x", c="#e67e22", label="stopped early (partial)")
    for n in failed:
        ax.axvline(n, color=FRONT, alpha=0.25, lw=1)
    ax.set(xlabel="trial", ylabel="validated accuracy", title="accuracy" + (f" ({len(failed)} failed: red lines)" if failed else ""))
    ax.legend(fontsize=8)
    ax = axes[0, 1]
    ax.scatter([t.number for t in done], [t.latency_ms for t in done], s=12, c="#2c3e50")
    if view.budget_ms is not None:
        ax.axhline(view.budget_ms, color=FRONT, ls="--", lw=1)
    ax.set(xlabel="trial", ylabel="latency (ms)", title="latency")
    ax = axes[0, 2]
    xs, ys = progress_curve(view)
    ax.step(xs, ys, where="post", color=FRONT)
    ax.set(xlabel="trial", title="best accuracy within the budget" if view.mode == "constrained" else "hypervolume of the front so far")
    for a in axes[0]:
        a.grid(alpha=0.3)
    caption = "Each complete trial's accuracy and latency in the order they ran, and how the front improved."
    return _save(fig, out, "history.png", "Optimisation history", caption)


def progress_curve(view: StudyView) -> tuple[list[int], list[float]]:
    done = sorted(view.complete, key=lambda t: t.number)
    if not done:
        return [], []
    xs, ys = [], []
    if view.mode == "constrained":
        best = float("nan")
        for t in done:
            if view.feasible(t) and not best >= t.accuracy:
                best = t.accuracy
            xs.append(t.number)
            ys.append(best)
        return xs, ys
    ref_acc = min(t.accuracy for t in done)  # on the primary target (the hypervolume is two-dimensional)
    ref_lat = 1.1 * max(t.latency_ms for t in done)
    for i, t in enumerate(done):
        xs.append(t.number)
        ys.append(hypervolume([(d.accuracy, d.latency_ms) for d in done[: i + 1]], ref_acc, ref_lat))
    return xs, ys


def latency_checks(view: StudyView, out: Path) -> Figure | None:
    """Predicted vs measured latency of the front members re-measured on the target."""
    pairs = [(c["predicted_ms"], c["measured_ms"]) for c in view.checks if c.get("measured_ms") and c.get("predicted_ms")]
    if not pairs:
        return None
    fig, axes = _new(600, 600)
    ax = axes[0, 0]
    ax.scatter([m for _, m in pairs], [p for p, _ in pairs], c="#2980b9")
    lo, hi = min(min(p) for p in pairs) * 0.9, max(max(p) for p in pairs) * 1.1
    ax.plot([lo, hi], [lo, hi], color="#7f8c8d", ls="--", lw=1, label="predicted = measured")
    mape = 100 * sum(abs(p - m) / m for p, m in pairs) / len(pairs)
    label = view.checks[0].get("label", view.meta.get("latency", "cost model"))
    ax.set(xlabel="measured latency (ms)", ylabel="predicted latency (ms)", xlim=(lo, hi), ylim=(lo, hi),
           title=f"{label}: MAPE {mape:.1f} % over {len(pairs)} front members")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    caption = "The front's members were measured on the target after the search; points on the dashed line were predicted exactly."
    return _save(fig, out, "latency_checks.png", "Predicted vs measured latency", caption)


def importance(scores: dict[str, dict[str, float]], out: Path) -> Figure | None:
    """The parameters that matter most for each objective (fANOVA importance, summing to 1)."""
    if not scores:
        return None
    n = max(len(v) for v in scores.values())
    fig, axes = _new(1100, 120 + 26 * n, 1, len(scores))
    for ax, (objective, values) in zip(axes[0], scores.items()):
        names = list(values)[::-1]
        ax.barh(range(len(names)), [values[k] for k in names], color="#16a085" if objective == "accuracy" else "#8e44ad")
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set(xlabel="importance (share)", title=f"for {objective}")
        ax.grid(alpha=0.3, axis="x")
    caption = "Optuna's fANOVA importance of each searched choice for each objective (the most important shown)."
    return _save(fig, out, "importance.png", "Which layer choices matter most", caption)

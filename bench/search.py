"""Search quality: vitune's search against the obvious alternatives, same trial budget, one run.

On the study file's model and target (default: the quickstart, i.e. the digits ViT on this CPU,
TVM-measured latency), each method gets the same number of candidate evaluations:

* ``vitune`` — the study file's sampler with warm start (sensitivity sweep) and early stopping;
* ``random`` — Optuna's RandomSampler, no warm start, no early stopping;
* ``uniform`` — the same option on every layer, every combination of the menu's levels
  (spread evenly over the grid when it has more points than the budget);
* ``greedy`` — the hardware-blind greedy rank allocation (``vitune compress --strategy
  greedy-rank``) at evenly spaced parameter budgets.

Every candidate goes through the same evaluator (compression, validated accuracy, measurement),
and results are shared through vitune's result cache, so one configuration has one latency in
every method. Printed per method: the front's hypervolume against a common reference point
(accuracy ``0.9 ×`` the uncompressed model's, latency the uncompressed model's), its ratio to
random's, and the best validated accuracy at ``2×`` and ``3×`` the uncompressed model's
measured speed. ``--json`` writes every figure printed; ``--plot`` saves the four fronts.

    python bench/search.py [--study studies/quickstart.toml] [--trials 100] [--sampler tpe] [--json out.json] [--plot fronts.png]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import random
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def pareto(points):
    """Non-dominated (accuracy, latency_ms) points, fastest first."""
    out = []
    for a, lat in sorted(points, key=lambda p: (p[1], -p[0])):
        if not out or a > out[-1][0]:
            out.append((a, lat))
    return out


def best_at(points, max_ms: float):
    ok = [a for a, lat in points if lat <= max_ms]
    return max(ok) if ok else None


def _study_points(spec):
    from vitune.search.front import accuracy_of, complete_trials, latency_of
    from vitune.search.study import open_study

    study = open_study(spec, create=False)
    return [(accuracy_of(t), latency_of(t)) for t in complete_trials(study)], study


def run_search(base, name: str, trials: int, sampler: str, warm: bool, out_dir: Path):
    from vitune.search.study import run_study
    from vitune.search.studyfile import SearchSpec

    search = base.search if warm else dataclasses.replace(SearchSpec(), warm_start=False, min_fidelity=0.0, accuracy_shards=1)
    spec = dataclasses.replace(base, name=f"bench-{name}", storage=f"sqlite:///{out_dir / f'{name}.db'}", n_trials=trials,
                               sampler=sampler, search=search, timeout_s=0.0)
    t0 = time.perf_counter()
    summary = run_study(spec, progress=True, log=lambda *_: None)
    points, study = _study_points(spec)
    return {"points": points, "seconds": time.perf_counter() - t0, "evaluated": len(study.trials),
            "stopped_early": summary.new_pruned, "failed": summary.new_failed}


def _evaluate_all(evaluator, configs, label):
    from tqdm.auto import tqdm

    points, failed, t0 = [], 0, time.perf_counter()
    for config in tqdm(configs, desc=label, unit="config"):
        r = evaluator.evaluate(config)
        if r.ok:
            points.append((r.metrics.accuracy, r.metrics.latency_ms))
        else:
            failed += 1
    return {"points": points, "seconds": time.perf_counter() - t0, "evaluated": len(configs), "stopped_early": 0, "failed": failed}


def uniform_configs(space, trials: int, seed: int = 0):
    """Every combination of one level per knob, applied to every layer that allows it."""
    from vitune.search.warmstart import knob_levels, uniform_assignment

    levels = knob_levels(space)
    grid = []
    for combo in itertools.product(*levels.values()):
        params = uniform_assignment(space, dict(zip(levels, combo)))
        if params not in grid:
            grid.append(params)
    if len(grid) > trials:
        grid = [grid[0]] + random.Random(seed).sample(grid[1:], trials - 1)
    return [space.to_config(p) for p in grid]


def greedy_configs(ws, layout, methods, trials: int):
    from vitune.compression.allocate import allocate
    from vitune.compression.calibrate import Calibration

    calib = Calibration.from_dataset(ws.data.calib, methods.calib_images)
    budgets = [round(0.1 + 0.9 * i / max(1, trials - 1), 3) for i in range(trials)]
    return [allocate("greedy-rank", ws.model, layout, calib.x, b, methods) for b in budgets]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", default=str(ROOT / "studies" / "quickstart.toml"))
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--greedy-levels", type=int, default=10, help="parameter budgets for the greedy allocation")
    ap.add_argument("--out-dir", default=str(ROOT / "bench" / "results" / "search"))
    ap.add_argument("--json", default=None)
    ap.add_argument("--plot", default=None, help="PNG of the four fronts (needs matplotlib)")
    ap.add_argument("--methods", default="vitune,random,uniform,greedy")
    ap.add_argument("--sampler", default=None, help="vitune's sampler (default: the study file's)")
    args = ap.parse_args()

    from vitune.costmodels import get_latency_source
    from vitune.models.layers import discover
    from vitune.models.zoo import load_workspace
    from vitune.search.cache import ResultCache, data_key, target_key
    from vitune.search.evaluate import Evaluator
    from vitune.search.space import SearchSpace
    from vitune.search.studyfile import load_study_file
    from vitune.targets import load_target

    base = load_study_file(args.study)
    if args.sampler:
        base = dataclasses.replace(base, sampler=args.sampler)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ws = load_workspace(base.model, base.data)
    profile = load_target(base.target.name)
    evaluator = Evaluator(ws, profile, get_latency_source("measured", profile),
                          cache=ResultCache(ws.ref.checkpoint_sha256, data_key(base.data, "val"), target_key(profile, base.target.tuning)))
    layout = discover(ws.model)
    space = SearchSpace.build(base.space, layout, base.methods)
    ref = evaluator.evaluate(space.to_config(space.identity_params()))
    acc0, ms0 = ref.metrics.accuracy, ref.metrics.latency_ms

    results = {}
    for method in args.methods.split(","):
        if method == "vitune":
            results[method] = run_search(base, "vitune", args.trials, base.sampler, True, out_dir)
        elif method == "random":
            results[method] = run_search(base, "random", args.trials, "random", False, out_dir)
        elif method == "uniform":
            results[method] = _evaluate_all(evaluator, uniform_configs(space, args.trials), "uniform")
        elif method == "greedy":
            results[method] = _evaluate_all(evaluator, greedy_configs(ws, layout, base.methods, args.greedy_levels), "greedy")
        else:
            raise SystemExit(f"unknown method {method!r}")

    from vitune.search.front import hypervolume

    ref_acc, ref_ms = 0.9 * acc0, ms0
    rows = {}
    for method, r in results.items():
        rows[method] = {
            "hypervolume": hypervolume(r["points"], ref_acc, ref_ms),
            "best_at_2x": best_at(r["points"], ms0 / 2),
            "best_at_3x": best_at(r["points"], ms0 / 3),
            "front": pareto(r["points"]),
            **{k: r[k] for k in ("evaluated", "stopped_early", "failed", "seconds")},
        }
    hv_random = rows.get("random", {}).get("hypervolume")
    print(f"model {base.model.name} on {profile.name}: uncompressed accuracy {acc0:.4f}, latency {ms0:.4f} ms; "
          f"{args.trials} trials per search, vitune's sampler {base.sampler}; hypervolume reference (accuracy {ref_acc:.4f}, latency {ref_ms:.4f} ms)")
    print(f"{'method':<8} {'evaluated':>9} {'stopped':>7} {'failed':>6} {'seconds':>8} {'hypervolume':>11} {'vs random':>9} {'acc@2x':>7} {'acc@3x':>7}")
    fmt = lambda v: f"{v:.4f}" if v is not None else "-"  # noqa: E731
    for method, row in rows.items():
        ratio = row["hypervolume"] / hv_random if hv_random else None
        row["hypervolume_vs_random"] = ratio
        print(f"{method:<8} {row['evaluated']:>9} {row['stopped_early']:>7} {row['failed']:>6} {row['seconds']:>8.1f} "
              f"{row['hypervolume']:>11.5f} {fmt(ratio):>9} {fmt(row['best_at_2x']):>7} {fmt(row['best_at_3x']):>7}")
    if "vitune" in rows and "uniform" in rows and rows["vitune"]["best_at_2x"] is not None and rows["uniform"]["best_at_2x"] is not None:
        gain = 100 * (rows["vitune"]["best_at_2x"] - rows["uniform"]["best_at_2x"])
        print(f"at 2x speed-up vitune is {gain:+.2f} points of accuracy over the best uniform configuration (target: >= +2)")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
        for method, r in results.items():
            xs = [lat for _, lat in r["points"]]
            ys = [a for a, _ in r["points"]]
            line = ax.scatter(xs, ys, s=10, alpha=0.35, label=None)
            front = rows[method]["front"]
            ax.step([lat for _, lat in front], [a for a, _ in front], where="post", color=line.get_facecolor()[0], alpha=1.0,
                    label=f"{method}{f' ({base.sampler})' if method == 'vitune' else ''}: HV {rows[method]['hypervolume']:.4f}")
        ax.scatter([ms0], [acc0], marker="*", s=150, color="black", label="uncompressed")
        for k in (2, 3):
            ax.axvline(ms0 / k, color="grey", linestyle=":", linewidth=1)
            ax.text(ms0 / k, ref_acc, f" {k}x", color="grey")
        ax.set_xlabel(f"latency on {profile.name} (ms, TVM-measured)")
        ax.set_ylabel("validated accuracy")
        ax.set_ylim(ref_acc, min(1.0, acc0 + 0.02))
        ax.set_title(f"{base.model.name}: Pareto fronts, {args.trials} trials each")
        ax.legend(loc="lower right")
        fig.tight_layout()
        fig.savefig(args.plot)
        print(f"wrote {args.plot}")
    if args.json:
        doc = {"model": base.model.name, "target": profile.name, "trials": args.trials, "sampler": base.sampler, "uncompressed": {"accuracy": acc0, "latency_ms": ms0},
               "reference_point": {"accuracy": ref_acc, "latency_ms": ref_ms}, "methods": rows,
               "points": {m: r["points"] for m, r in results.items()}}
        Path(args.json).write_text(json.dumps(doc, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

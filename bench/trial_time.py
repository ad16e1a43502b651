"""Per-trial time split of a study on the default model: compress / accuracy / export / build / codegen / run.

Runs the same code path as ``vitune study run`` (the Evaluator) on random configurations of
the quickstart's search space and prints, per stage, the median and mean seconds and its
share of the trial, plus the untimed overhead.

    python bench/trial_time.py [--trials 10] [--target local-cpu] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

STAGES = ("compress_s", "accuracy_s", "export_s", "build_s", "codegen_s", "run_s")


def random_trials(space, evaluator, n: int, seed: int):
    """``n`` random configurations of ``space`` (Optuna's RandomSampler with ``seed``), each
    evaluated by ``evaluator``: yields ``(config, result, seconds the evaluation took)``."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=seed))
    for _ in range(n):
        trial = study.ask()
        config = space.suggest(trial)
        t0 = time.perf_counter()
        result = evaluator.evaluate(config)
        seconds = time.perf_counter() - t0
        study.tell(trial, state=optuna.trial.TrialState.COMPLETE if result.ok else optuna.trial.TrialState.FAIL,
                   values=[result.metrics.accuracy, result.metrics.latency_ms] if result.ok else None)
        yield config, result, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--target", default="local-cpu")
    parser.add_argument("--study", default=str(Path(__file__).resolve().parents[1] / "studies" / "quickstart.toml"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="write every figure printed to this file")
    args = parser.parse_args()

    from vitune.costmodels import get_latency_source
    from vitune.models.layers import discover
    from vitune.models.zoo import load_workspace
    from vitune.search.evaluate import Evaluator
    from vitune.search.space import SearchSpace
    from vitune.search.studyfile import load_study_file
    from vitune.targets import load_target

    spec = load_study_file(args.study)
    profile = load_target(args.target)
    ws = load_workspace(spec.model, spec.data)
    space = SearchSpace.build(spec.space, discover(ws.model))
    evaluator = Evaluator(ws, profile, get_latency_source("measured", profile))
    rows = []
    for i, (config, result, total) in enumerate(random_trials(space, evaluator, args.trials, args.seed)):
        row = {"trial": i, "total_s": total, "ok": result.ok, "error": result.error, **{k: result.timings.get(k, 0.0) for k in STAGES}}
        rows.append(row)
        print(f"trial {i:>3}: total {total:6.2f} s  " + "  ".join(f"{k[:-2]} {row[k]:6.3f}" for k in STAGES) + ("" if result.ok else f"  FAILED {result.error}"))

    summary = {}
    totals = [r["total_s"] for r in rows]
    print(f"\nper-trial time split over {len(rows)} trials on {profile.name} ({profile.tvm_target})")
    print(f"{'stage':<10} {'median_s':>9} {'mean_s':>9} {'share':>7}")
    for k in STAGES + ("other",):
        vals = [r["total_s"] - sum(r[s] for s in STAGES) for r in rows] if k == "other" else [r[k] for r in rows]
        summary[k] = {"median_s": statistics.median(vals), "mean_s": statistics.mean(vals), "share": sum(vals) / sum(totals)}
        print(f"{k.removesuffix('_s'):<10} {summary[k]['median_s']:>9.3f} {summary[k]['mean_s']:>9.3f} {summary[k]['share']:>6.1%}")
    summary["total"] = {"median_s": statistics.median(totals), "mean_s": statistics.mean(totals)}
    print(f"{'total':<10} {summary['total']['median_s']:>9.3f} {summary['total']['mean_s']:>9.3f} {1:>6.1%}")
    if args.json:
        Path(args.json).write_text(json.dumps({"target": profile.describe(), "trials": rows, "summary": summary}, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

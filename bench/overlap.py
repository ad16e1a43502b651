"""Accuracy read beside the build against after it, side by side: the same configurations
evaluated both ways in alternating order in one process.

``vitune.search.overlap`` reads a candidate's validated accuracy in a thread while its latency
stage builds it. This bench takes ``--configs`` random configurations of a study's space (the
study file ``bench/scale.py`` writes, e.g. ``/tmp/vitune-scale/deit_tiny.toml``), evaluates each
once to warm the process (its kernels compiled, its decompositions traced: what a study's later
trials find), then twice more: beside and after, in alternating order (ABBA over the
configurations), without a results cache. Per configuration: both trials' wall time and split,
and whether both read the same accuracy. A candidate's accuracy is the same either way; its
latency is timed again each time (noise).

    python bench/overlap.py --study /tmp/vitune-scale/deit_tiny.toml [--configs 6] [--seed 3] [--json F]

JSON: ``rows`` (config, ``after`` and ``beside``: wall_s, split, accuracy, accuracy_beside_s),
``wall_s_median`` (``after``, ``beside``), ``ratio_median`` (beside / after, per configuration).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", required=True)
    ap.add_argument("--configs", type=int, default=6)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import optuna
    from scale import split_of

    from vitune.models.layers import discover
    from vitune.models.zoo import load_workspace
    from vitune.search.evaluate import EarlyStop, Evaluator
    from vitune.search.space import SearchSpace
    from vitune.search.study import latency_source_for
    from vitune.search.studyfile import load_study_file
    from vitune.targets.host import describe

    spec = load_study_file(args.study)
    profile, source, _tuner = latency_source_for(spec, spec.target, "[target]")
    workspace = load_workspace(spec.model, spec.data, progress=False)
    space = SearchSpace.build(spec.space, discover(workspace.model), spec.methods, where=str(spec.path))
    source.bind(workspace, space, spec.target.tuning)
    early = EarlyStop(0.0, spec.search.fidelity_images, 1)
    after = Evaluator(workspace, profile, source, early=early, overlap=False)
    beside = Evaluator(workspace, profile, source, early=early, overlap=True)
    after.calibration(spec.methods.calib_images)
    beside.calibration(spec.methods.calib_images)  # the same images: the calib split's first
    after.evaluate(space.to_config(space.identity_params()))  # trial 0: the drift reference
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=args.seed))
    rows = []
    for i in range(args.configs):
        config = space.suggest(sampler.ask())
        after.evaluate(config)  # warm: kernels compiled, decompositions traced
        row: dict = {"config": config.summary()}
        for how in (("after", "beside") if i % 2 == 0 else ("beside", "after")):
            t0 = time.perf_counter()
            result = (after if how == "after" else beside).evaluate(config)
            wall = time.perf_counter() - t0
            if not result.ok:
                raise SystemExit(f"{config.summary()} ({how}) failed: {result.error}")
            row[how] = {"wall_s": wall, "split": split_of(result.timings, wall), "accuracy": result.metrics.accuracy,
                        "latency_ms": result.metrics.latency_ms, "accuracy_beside_s": result.timings.get("accuracy_beside_s", 0.0)}
        row["same_accuracy"] = row["after"]["accuracy"] == row["beside"]["accuracy"]
        rows.append(row)
        a, b = row["after"], row["beside"]
        print(f"{i + 1}/{args.configs} {row['config']}: after {a['wall_s']:.1f} s (accuracy {a['split']['accuracy']:.1f}, build "
              f"{a['split']['build']:.1f}), beside {b['wall_s']:.1f} s (accuracy waited {b['split']['accuracy']:.1f}, read beside "
              f"{b['accuracy_beside_s']:.1f}, build {b['split']['build']:.1f}); same accuracy: {row['same_accuracy']}", flush=True)
    doc = {
        "host": describe(), "study": args.study, "seed": args.seed, "rows": rows,
        "wall_s_median": {k: statistics.median(r[k]["wall_s"] for r in rows) for k in ("after", "beside")},
        "ratio_median": statistics.median(r["beside"]["wall_s"] / r["after"]["wall_s"] for r in rows),
        "all_same_accuracy": all(r["same_accuracy"] for r in rows),
    }
    print(f"median trial: after {doc['wall_s_median']['after']:.1f} s, beside {doc['wall_s_median']['beside']:.1f} s; "
          f"beside / after per configuration, median {doc['ratio_median']:.2f}; same accuracy everywhere: {doc['all_same_accuracy']}")
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=2, default=str))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

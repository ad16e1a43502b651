"""Kernel reuse (vitune/targets/kernels.py): the build a search trial makes against the build that
ships, on the same candidates: build time, outputs and latency side by side.

Random candidates of a study's space (Optuna's RandomSampler with ``--seed``; distillation off,
it changes no kernel) are compressed once each and built twice, in the order a study meets
them: ``shipped`` as ``vitune apply`` builds it (``relax.build``: one library, every kernel
generated), ``reused`` as a search trial builds it (kernels this process compiled for the earlier
candidates reused, the new ones compiled and kept). The two builds of a candidate alternate
which goes first. Per candidate:

* ``build_s``: export, Relax passes, code generation, loading and the first run (what a trial
  pays before its timing), for each build; the kernels reused and compiled;
* ``equal``: whether both builds give the same output, bit for bit, on the study's example;
* ``latency_ms``: each build's fastest repeat (the target's protocol) over ``--rounds``
  interleaved rounds of every build, and ``ratio`` = reused / shipped;
* a third build, ``control``, is the shipped one made again: ``control_ratio`` = control /
  shipped is how far two builds of the same code differ when timed side by side, the floor
  under ``ratio``.

The summary gives the medians, the range of the ratios and the Spearman rank correlation of
each build's latencies with the shipped one's over the candidates (whether a search on the
reused builds ranks them as the shipped ones).

    python bench/kernel_reuse.py [--study studies/quickstart.toml] [--configs 8] [--rounds 5] [--seed 0] [--json F]

``--rounds 0`` builds and compares without timing (where each run is long: untuned builds at 224 px).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def candidates(space, n: int, seed: int) -> list:
    """``n`` random configurations of ``space``, without distillation."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return [space.suggest(study.ask()).replace(distill_steps=0) for _ in range(n)]


def _built(model, example, profile, tuner, reuse: bool):
    """A build and the seconds until its first run returned (what a trial pays before timing)."""
    from vitune.targets.compile import compile_model
    from vitune.targets.runner import runner_for

    t0 = time.perf_counter()
    compiled = compile_model(model, example, profile, tuner, reuse_kernels=reuse)
    out = runner_for(profile).run(compiled, example.numpy())
    return compiled, out, time.perf_counter() - t0


BUILDS = ("shipped", "reused", "control")


def compare(models: list, example, profile, tuner=None, rounds: int = 5, log=print) -> list[dict]:
    """Each of ``models`` built as it ships, as a trial builds it (kernels reused) and as it
    ships once more (``control``: how far two builds of the same code differ in timing), their
    outputs compared and all three timed in ``rounds`` interleaved rounds. One record per model."""
    import numpy as np

    from vitune.targets.runner import runner_for

    runner = runner_for(profile)
    rows, builds = [], []
    for i, model in enumerate(models):
        order = BUILDS[i % 3:] + BUILDS[:i % 3]  # which build goes first rotates
        made = {name: _built(model, example, profile, tuner, name == "reused") for name in order}
        kernels = made["reused"][0].kernels
        report = made["shipped"][0].tuning
        rows.append({"build_s": {name: made[name][2] for name in BUILDS},
                     # where the kernels' schedules came from: the target's database (tuned or shipped) or TVM's defaults
                     "workloads": None if report is None else {"from_database": report.from_database, "untuned": report.untuned},
                     "kernels_reused": kernels.reused if kernels else 0, "kernels_compiled": kernels.compiled if kernels else None,
                     "equal": all(bool(np.array_equal(made["shipped"][1], made[name][1])) for name in BUILDS)})
        builds.append({name: made[name][0] for name in BUILDS})
        b = rows[-1]["build_s"]
        log(f"candidate {i}: build {b['shipped']:.2f} s shipped, {b['reused']:.2f} s reused ({rows[-1]['kernels_reused']} kernels reused, "
            f"{rows[-1]['kernels_compiled']} compiled), {b['control']:.2f} s shipped again; outputs equal: {rows[-1]['equal']}"
            + (f"; workloads {report.from_database} from the database, {report.untuned} untuned" if report is not None else ""))
    fastest = [dict.fromkeys(BUILDS, float("inf")) for _ in models]
    x = example.numpy()
    for _ in range(rounds):
        for i, built in enumerate(builds):
            for name in BUILDS:
                fastest[i][name] = min(fastest[i][name], min(runner.time(built[name], x, profile.protocol)))
    for row, ms in zip(rows, fastest):
        row["latency_ms"] = ms if rounds else None
        row["ratio"] = ms["reused"] / ms["shipped"] if rounds else None
        row["control_ratio"] = ms["control"] / ms["shipped"] if rounds else None
    return rows


def spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman's rank correlation (vitune's, as the cost-model benches report it); None under 3
    points (JSON has no NaN)."""
    from vitune.costmodel_workflow import spearman as rank_correlation

    return rank_correlation(a, b) if len(a) > 2 else None


def summary(rows: list[dict]) -> dict:
    """Medians over the candidates (build times: the second on; the first pays the process's
    first build either way), the latency ratios' range and their rank correlation."""
    later = rows[1:] or rows
    out = {"build_s_median": {k: statistics.median(r["build_s"][k] for r in later) for k in BUILDS},
           "all_equal": all(r["equal"] for r in rows)}
    for key, other in (("ratio", "reused"), ("control_ratio", "control")):
        ratios = [r[key] for r in rows if r[key] is not None]
        if ratios:
            out[key] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
                        "spearman": spearman([r["latency_ms"]["shipped"] for r in rows], [r["latency_ms"][other] for r in rows])}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", default=str(ROOT / "studies" / "quickstart.toml"))
    ap.add_argument("--configs", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from vitune.costmodels import get_latency_source
    from vitune.models.layers import discover
    from vitune.models.zoo import load_workspace
    from vitune.search.evaluate import Evaluator
    from vitune.search.space import SearchSpace
    from vitune.search.studyfile import load_study_file
    from vitune.targets import load_target
    from vitune.targets.host import describe
    from vitune.targets.tuning import Tuner

    spec = load_study_file(args.study)
    profile = load_target(spec.target.name)
    ws = load_workspace(spec.model, spec.data)
    space = SearchSpace.build(spec.space, discover(ws.model), spec.methods, where=str(spec.path))
    evaluator = Evaluator(ws, profile, get_latency_source("measured", profile))
    example = ws.example_input(1)
    configs = candidates(space, args.configs, args.seed)
    t0 = time.perf_counter()
    models = [evaluator.compress(c) for c in configs]
    print(f"{len(models)} candidates compressed in {time.perf_counter() - t0:.1f} s")
    tuner = Tuner(profile, "database")
    try:
        rows = compare(models, example, profile, tuner, args.rounds)
    finally:
        tuner.close()
    for row, config in zip(rows, configs):
        row["config"] = config.to_dict()
    s = summary(rows)
    print(f"build, median of candidates 2-{len(rows)}: {s['build_s_median']['shipped']:.2f} s shipped, {s['build_s_median']['reused']:.2f} s reused; "
          f"outputs equal: {s['all_equal']}")
    for key, label in (("ratio", "reused / shipped"), ("control_ratio", "shipped again / shipped")):
        if key in s:
            r = s[key]
            print(f"latency {label}: median {r['median']:.3f} ({r['min']:.3f}-{r['max']:.3f}), "
                  f"Spearman {r['spearman'] if r['spearman'] is None else round(r['spearman'], 3)}")
    for i, r in enumerate(rows):
        if r["latency_ms"]:
            ms = r["latency_ms"]
            print(f"  {i}: {ms['shipped']:.4f} ms shipped, {ms['reused']:.4f} reused ({r['ratio']:.3f}), {ms['control']:.4f} shipped again ({r['control_ratio']:.3f})")
    if args.json:
        Path(args.json).write_text(json.dumps({"host": describe(), "study": str(args.study), "target": profile.name, "rounds": args.rounds,
                                               "seed": args.seed, "summary": s, "candidates": rows}, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

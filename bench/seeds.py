"""What shipped schedules tuned on another CPU cost here, and what int8 without VNNI costs.

A study with ``tuning = "tune"`` or ``"database"`` builds each workload its machine's database
lacks with a shipped schedule (:mod:`vitune.targets.seeds`) when one exists, even one tuned on
another CPU model (it says ``tuned on znver5, not this CPU``). This bench builds the study's model
(uncompressed, and compressed with each ``--config``) twice for the study's target:

* ``seeds``: kernels from the shipped schedules alone (an empty database, seeds on: what a fresh
  machine's study and ``vitune apply`` build);
* ``own``: kernels tuned on this machine at ``--trials-per-task`` (seeds off, a database of its
  own under ``--own-cache``, kept between runs: what ``vitune tune`` gives);

and times the builds in ``--rounds`` interleaved rounds (the target's protocol, fastest repeat
per round, fastest round reported). With a ``w8a8`` configuration it also shows what those layers
cost on this CPU against the uncompressed model in the same tuning.

    python bench/seeds.py [--study studies/digits_base.toml] [--config F ...]
                          [--trials-per-task 16] [--rounds 5] [--json F]

JSON keys: ``host``, ``builds`` → name → ``seeds_ms``, ``own_ms``, ``seeds_over_own``,
``seeds_tuning`` / ``own_tuning`` (the tuning report's line).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
from pathlib import Path


@contextlib.contextmanager
def cache_at(path: Path):
    """vitune's cache directory (tuning databases) at ``path`` for the block's duration."""
    before = os.environ.get("VITUNE_CACHE_DIR")
    os.environ["VITUNE_CACHE_DIR"] = str(path)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("VITUNE_CACHE_DIR", None)
        else:
            os.environ["VITUNE_CACHE_DIR"] = before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", default="studies/digits_base.toml")
    parser.add_argument("--config", action="append", default=[], help="a configuration to build (repeatable; the uncompressed model always)")
    parser.add_argument("--trials-per-task", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--own-cache", default=str(Path(tempfile.gettempdir()) / "vitune-own-tuning"))
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from value import study_models

    from vitune.targets.compile import compile_model
    from vitune.targets.host import describe
    from vitune.targets.runner import runner_for
    from vitune.targets.tuning import Tuner
    from vitune.versions import versions

    t0 = time.perf_counter()
    ws, profile, models = study_models(Path(args.study), args.config)
    if profile.runner != "local" or not profile.is_native:
        raise SystemExit(f"bench/seeds.py times builds in this process: target {profile.name} runs elsewhere")
    example = ws.example_input(1)

    builds: dict[tuple[str, str], object] = {}
    lines: dict[tuple[str, str], str] = {}
    with tempfile.TemporaryDirectory() as empty, cache_at(Path(empty)):
        tuner = Tuner(profile, "database")  # seeds of any CPU model below an empty database
        for name, model in models.items():
            builds[name, "seeds"] = built = compile_model(model, example, profile, tuner)
            lines[name, "seeds"] = built.tuning.line() if built.tuning else "untuned"
            print(f"{name}, seeds: {lines[name, 'seeds']}", flush=True)
        tuner.close()
    with cache_at(Path(args.own_cache)):
        tuner = Tuner(profile, "tune", args.trials_per_task, other_cpu_seeds=False)
        for name, model in models.items():
            builds[name, "own"] = built = compile_model(model, example, profile, tuner)
            lines[name, "own"] = built.tuning.line() if built.tuning else "untuned"
            print(f"{name}, own: {lines[name, 'own']}", flush=True)
        tuner.close()

    runner = runner_for(profile)
    for built in builds.values():
        runner.prepare(built)
    best = {key: float("inf") for key in builds}
    inputs = example.numpy()
    for r in range(args.rounds):
        for key, built in builds.items():
            best[key] = min(best[key], min(runner.time(built, inputs, profile.protocol)))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n}/{k} {best[n, k]:.4f}" for n, k in builds), flush=True)

    doc: dict = {"versions": versions(), "host": describe(), "study": args.study, "target": profile.name,
                 "trials_per_task": args.trials_per_task, "rounds": args.rounds, "builds": {}}
    print(f"\n{'build':32} {'seeds ms':>9} {'own ms':>9} {'seeds/own':>9}")
    for name in models:
        s, o = best[name, "seeds"], best[name, "own"]
        doc["builds"][name] = {"seeds_ms": s, "own_ms": o, "seeds_over_own": s / o, "seeds_tuning": lines[name, "seeds"],
                               "own_tuning": lines[name, "own"]}
        print(f"{name:32} {s:9.4f} {o:9.4f} {s / o:9.2f}")
    for name in list(models)[1:]:
        for kind in ("seeds", "own"):
            print(f"{name} / uncompressed ({kind}): {best[name, kind] / best['uncompressed', kind]:.2f}")
    doc["seconds"] = time.perf_counter() - t0
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

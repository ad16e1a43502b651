"""Per-trial cost at real size: what one trial of a study costs on the default model and on
DeiT-Tiny, -Small and -Base at 224 px, split by stage, with the study's once-only work and
peak memory.

For each model a study file is written (``[model]``, ``[data]``, a mixed space of all four
families: precision, low-rank rank, head and MLP pruning, distillation steps; the quickstart's
bounded compression; the fidelity screen off, so every trial is built and timed) and read by
vitune's own reader. Then, in a process of its own (so its peak resident memory is its own),
the study's once-only work is timed (``prepare_s``: model and data, the calibration batch, the
baseline runtimes) and the uncompressed model is evaluated, as a study's trial 0 is. Then
``--trials`` random configurations of the space go through the study's
:class:`~vitune.search.evaluate.Evaluator` (compress → latency → validated accuracy; no front,
so accuracy is read in full: the worst case), each trial's wall time split into

* ``compress`` (compression, distillation included), ``accuracy`` (validated accuracy: what is
  left of it once the latency is known; the part read beside the build, on the core the build
  leaves, is each row's ``accuracy_beside_s`` and not in the wall time's split),
* ``build`` (export, Relax build, weight layout, code generation), ``tuning`` (workloads tuned
  now), ``timing`` (the timed runs),
* ``overhead`` (the rest of the trial's wall time),

which add up to the trial's wall time; and the first configuration is evaluated again through
the study's results cache (``cache_hit_s``). A 100-trial study is extrapolated as ``prepare_s``
plus the uncompressed evaluation plus 100 mean trials.

The timm models are random-init (seeded: the same weights in every process) and their data a
generated ImageFolder tree (``--val-images`` in the validation split, at 224 px); the default
model reads digits (its validation split has 269 images). Latency comes from the target's
tuning database (``--tuning database``: workloads it lacks are built with default schedules and
counted as ``untuned_workloads``), ``--tuning tune`` tunes them, ``off`` builds untuned.
``--latency learned`` (or ``lut``, ``analytical``) predicts each trial's latency with the cost
model ``vitune costmodel fit local-cpu --model WORK/<model>.toml`` fitted on measurements in the
same tuning mode (no build, no timed run: the prediction's time is the ``timing`` stage), as a
study with ``[target] latency = "learned"`` does; ``vitune costmodel eval`` shows how well it ranks.

    python bench/scale.py [--models digits_vit_base,deit_tiny,deit_small,deit_base] [--trials 10]
        [--val-images 500] [--tuning database] [--latency measured] [--json F]

JSON keys per model (``models`` → name): ``trial_s_median``, ``trial_s_mean``, ``split`` (name →
mean seconds, adding up to ``trial_s_mean``), ``peak_rss_mb``, ``prepare_s`` (and
``prepare_split``), ``uncompressed_s``, ``cache_hit_s``, ``study_100_s``, ``trials`` (one row
each: configuration summary, wall time, split, latency, accuracy, workloads).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMM = {"deit_tiny": "deit_tiny_patch16_224", "deit_small": "deit_small_patch16_224", "deit_base": "deit_base_patch16_224"}
EMBEDDED = ("digits_vit_base", "digits_deit_tiny")  # trained on digits, shipped in the package: accuracy means something
MODELS = (*EMBEDDED, *TIMM)
CLASSES = 4
FRACTIONS = {"train": 0.3, "calib": 0.1, "val": 0.3, "test": 0.3}
STAGES = {  # split bucket → the Evaluator's timing keys it sums
    "compress": ("compress_s", "fidelity_s"),
    "accuracy": ("accuracy_s",),
    "build": ("export_s", "build_s", "prepack_s", "codegen_s"),
    "tuning": ("tune_s",),
    "timing": ("run_s", "predict_s"),  # predicted latency (--latency learned|lut|analytical): the prediction
}

MENUS = """
[space]
precision = ["fp32", "int8", "w8a8"]
rank_fraction = [1.0, 0.5, 0.25]
prune_heads = [0.0, 0.34]
prune_mlp = [0.0, 0.25, 0.5]
"""  # the mixed space's menus (bench/memory.py ties them across blocks)

SPACE = MENUS + """distill_steps = [0, 10]

[[space.override]]
layers = "blocks.0.*"
precision = ["fp32"]

[compression]
lowrank = "aa-residual"
calib_images = 64
refine_steps = 50

[search]
min_fidelity = 0
accuracy_shards = 1
"""


def study_text(name: str, data_root: Path | None, tuning: str, kd_precision: str = "float32", latency: str = "measured") -> str:
    if name in EMBEDDED:
        model = f'[model]\nsource = "default"\nname = "{name}"\n\n[data]\nsource = "digits"\n'
    else:
        fractions = ", ".join(f"{k} = {v}" for k, v in FRACTIONS.items())
        model = (f'[model]\nsource = "timm"\nname = "{TIMM[name]}"\npretrained = false\nnum_classes = {CLASSES}\n\n'
                 f'[data]\nsource = "imagefolder"\nroot = "{data_root}"\nfractions = {{ {fractions} }}\n')
    return (f'[study]\nname = "scale-{name}"\nn_trials = 100\nsampler = "random"\nseed = 0\n\n{model}\n'
            f'[target]\nname = "local-cpu"\nlatency = "{latency}"\ntuning = "{tuning}"\ntuning_trials = 16\n'
            + SPACE.replace("[compression]\n", f'[compression]\nkd_precision = "{kd_precision}"\n'))


def make_images(root: Path, val_images: int, size: int = 224, val_share: float = FRACTIONS["val"]) -> Path:
    """A generated ImageFolder tree whose validation split (``val_share`` of the images) holds
    ``val_images`` images (made once)."""
    import numpy as np
    from PIL import Image

    per_class = math.ceil(val_images / val_share / CLASSES)
    done = root / f".complete-{per_class}-{size}"
    if done.exists():
        return root
    rng = np.random.default_rng(0)
    for c in range(CLASSES):
        d = root / f"class_{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = np.full((size, size, 3), 40 + 50 * c, np.float32)
            noise = rng.normal(0, 30, (size // 16, size // 16, 3)).repeat(16, 0).repeat(16, 1)
            Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(d / f"{i}.jpg", quality=90)
    done.touch()
    return root


def bench_study(name: str, val_images: int, work: Path, stem: str, tuning: str = "off"):
    """``(spec, workspace, space)`` of this bench's study of model ``name`` (its images made once
    under ``work``, the study file written as ``work/<stem>-<name>.toml``), for the benches that
    reuse it (accuracy_speed, distill_precision)."""
    from vitune.models.layers import discover
    from vitune.models.zoo import load_workspace
    from vitune.search.space import SearchSpace
    from vitune.search.studyfile import load_study_file

    work.mkdir(parents=True, exist_ok=True)
    data_root = make_images(work / "images", val_images) if name in TIMM else None
    study_path = work / f"{stem}-{name}.toml"
    study_path.write_text(study_text(name, data_root, tuning))
    spec = load_study_file(study_path)
    workspace = load_workspace(spec.model, spec.data, progress=False)
    return spec, workspace, SearchSpace.build(spec.space, discover(workspace.model), spec.methods, where=str(spec.path))


def split_of(timings: dict, wall: float) -> dict[str, float]:
    out = {k: sum(float(timings.get(t, 0.0)) for t in keys) for k, keys in STAGES.items()}
    out["overhead"] = max(0.0, wall - sum(out.values()))
    return out


def run_one(name: str, study_path: Path, trials: int, seed: int, work: Path, overlap: bool = True) -> dict:
    """The measurements of one model, in this process."""
    from trial_time import random_trials  # bench/ (this script's folder, on sys.path when run)

    from vitune.jsontable import JsonTable
    from vitune.models.layers import discover
    from vitune.models.zoo import load_workspace
    from vitune.search.cache import ResultCache, data_key, target_key
    from vitune.search.evaluate import EarlyStop, Evaluator
    from vitune.search.space import SearchSpace
    from vitune.search.study import latency_source_for, time_baselines
    from vitune.search.studyfile import load_study_file

    prepare: dict[str, float] = {}
    t0 = time.perf_counter()
    spec = load_study_file(study_path)
    profile, source, tuner = latency_source_for(spec, spec.target, "[target]")
    workspace = load_workspace(spec.model, spec.data, progress=False)
    space = SearchSpace.build(spec.space, discover(workspace.model), spec.methods, where=str(spec.path))
    source.bind(workspace, space, spec.target.tuning)
    prepare["workspace"] = time.perf_counter() - t0
    cache = ResultCache(workspace.ref.checkpoint_sha256, data_key(spec.data, "val"), target_key(profile, spec.target.tuning))
    results = work / f"results-{name}.json"
    results.unlink(missing_ok=True)
    cache.table = JsonTable(results)  # this run's own: no hits from earlier runs
    evaluator = Evaluator(workspace, profile, source, early=EarlyStop(0.0, spec.search.fidelity_images, 1), cache=cache, overlap=overlap)
    t0 = time.perf_counter()
    evaluator.calibration(spec.methods.calib_images)
    prepare["calibration"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    baseline = time_baselines(workspace, [(profile, spec.target)], log=lambda *_: None)
    prepare["baseline_peers"] = time.perf_counter() - t0
    log = lambda text: print(f"  {name}: {text}", flush=True)  # noqa: E731
    log(f"prepared in {sum(prepare.values()):.1f} s ({', '.join(f'{k} {v:.1f}' for k, v in prepare.items())}); "
        f"val {len(workspace.data.val)} images; space {len(space.choices)} knobs")

    def row(config, wall, result) -> dict:
        m = result.metrics
        return {
            "config": config.summary(), "wall_s": wall, "split": split_of(result.timings, wall),
            "distill_s": result.timings.get("distill_s", 0.0),  # inside split["compress"]
            "accuracy_beside_s": result.timings.get("accuracy_beside_s", 0.0),  # read beside the build: not in the split
            "latency_ms": m.latency_ms, "latency_source": m.latency_source, "latency_attempts": m.latency_attempts, "accuracy": m.accuracy, "error": result.error or result.pruned,
            "tuned_workloads": result.timings.get("tuned_workloads"), "untuned_workloads": result.timings.get("untuned_workloads"),
        }

    t0 = time.perf_counter()
    identity = space.to_config(space.identity_params())
    ref = evaluator.evaluate(identity)
    uncompressed = row(identity, time.perf_counter() - t0, ref)
    log(f"uncompressed: {uncompressed['wall_s']:.1f} s, {ref.metrics.latency_ms} ms, accuracy {ref.metrics.accuracy}")

    rows, configs = [], []
    for i, (config, result, wall) in enumerate(random_trials(space, evaluator, trials, seed)):
        rows.append(row(config, wall, result))
        configs.append(config)
        r = rows[-1]
        log(f"trial {i + 1}/{trials}: {wall:.1f} s (" + ", ".join(f"{k} {v:.1f}" for k, v in r["split"].items()) + f"), {r['config']}"
            + (f", {r['latency_ms']:.3f} ms" if r["latency_ms"] else "") + (f", untuned workloads {r['untuned_workloads']}" if r["untuned_workloads"] else "")
            + (f", timed {r['latency_attempts']} times (drift)" if (r["latency_attempts"] or 1) > 1 else "")
            + (f" FAILED: {r['error']}" if r["error"] else ""))
    hit_s = None
    if configs:
        t0 = time.perf_counter()
        again = evaluator.evaluate(configs[0])
        hit_s = time.perf_counter() - t0
        log(f"the first configuration again, from the results cache: {hit_s:.3f} s ({'served' if again.metrics.cached else 'NOT served'})")
    walls = [r["wall_s"] for r in rows]
    split = {k: statistics.mean(r["split"][k] for r in rows) for k in rows[0]["split"]} if rows else {}
    base = baseline.get(profile.name, {})
    return {
        "model": name,
        "input_shape": list(workspace.data.input_shape), "val_images": len(workspace.data.val),
        "params": sum(p.numel() for p in workspace.model.parameters()),
        "trials_n": len(rows), "trial_s_median": statistics.median(walls) if walls else None,
        "trial_s_mean": statistics.mean(walls) if walls else None, "split": split,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "prepare_s": sum(prepare.values()), "prepare_split": prepare, "uncompressed_s": uncompressed["wall_s"],
        "uncompressed": uncompressed, "cache_hit_s": hit_s,
        "study_100_s": sum(prepare.values()) + uncompressed["wall_s"] + 100 * statistics.mean(walls) if walls else None,
        "baseline": {"runtime": base.get("runtime"), "latency_ms": base.get("latency_ms")},
        "tuning": spec.target.tuning, "trials": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--trials-for", default="", help="per-model trial counts overriding --trials, e.g. deit_base=3,deit_small=5")
    ap.add_argument("--val-images", type=int, default=500)
    ap.add_argument("--tuning", default="database", choices=("database", "tune", "off"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kd-precision", default="float32", choices=("float32", "bfloat16"),
                    help="[compression] kd_precision of the studies (bench/distill_precision.py compares the two)")
    ap.add_argument("--latency", default="measured", choices=("measured", "learned", "lut", "analytical"),
                    help="[target] latency of the studies: measured through a TVM build, or predicted by the cost model "
                         "'vitune costmodel fit local-cpu --model WORK/<model>.toml' fitted (on the same tuning mode)")
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "vitune-scale"), help="study files, generated images, results caches")
    ap.add_argument("--json", default=None)
    ap.add_argument("--sequential-accuracy", action="store_true",
                    help="read validated accuracy after the latency stage, not beside the build (vitune before stop 51)")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: one model, in this process
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.one:
        doc = run_one(args.one, work / f"{args.one}.toml", args.trials, args.seed, work, overlap=not args.sequential_accuracy)
        Path(args.out).write_text(json.dumps(doc, indent=2, default=str))
        return
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    counts = {k.strip(): int(v) for k, v in (item.split("=", 1) for item in args.trials_for.split(",") if item.strip())}
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        ap.error(f"unknown model(s) {', '.join(unknown)} (known: {', '.join(MODELS)})")
    images = make_images(work / "images", args.val_images) if any(n in TIMM for n in names) else None
    results: dict[str, dict] = {}
    for name in names:
        (work / f"{name}.toml").write_text(study_text(name, images, args.tuning, args.kd_precision, args.latency))
        out = work / f"{name}.json"
        out.unlink(missing_ok=True)
        trials = counts.get(name, args.trials)
        print(f"{name}: {trials} trials, tuning {args.tuning}", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "--one", name, "--out", str(out), "--trials", str(trials),
                               "--seed", str(args.seed), "--work", str(work)] + (["--sequential-accuracy"] if args.sequential_accuracy else []),
                              env=os.environ.copy())
        if proc.returncode != 0 or not out.exists():
            results[name] = {"model": name, "error": f"exit status {proc.returncode}"}
            print(f"{name}: FAILED (exit status {proc.returncode})", flush=True)
            continue
        results[name] = json.loads(out.read_text())
        results[name]["wall_s"] = time.perf_counter() - t0
        if args.json:  # after every model: a run stopped later keeps what it measured
            write(args, names, counts, results)
    print(f"\n{'model':<16} {'trial_s (median)':>16} {'mean':>7}  split (mean s)" + " " * 44 + f"{'prepare_s':>9} {'cache hit':>9} {'peak MB':>8} {'100 trials':>10}")
    for name, r in results.items():
        if "error" in r:
            print(f"{name:<16} failed: {r['error']}")
            continue
        split = ", ".join(f"{k} {v:.1f}" for k, v in r["split"].items())
        print(f"{name:<16} {r['trial_s_median']:>16.1f} {r['trial_s_mean']:>7.1f}  {split:<56} {r['prepare_s']:>9.1f} "
              f"{r['cache_hit_s']:>9.3f} {r['peak_rss_mb']:>8.0f} {r['study_100_s'] / 3600:>9.2f}h")
    if args.json:
        write(args, names, counts, results)
        print(f"wrote {args.json}")


def write(args, names, counts, results) -> None:
    from vitune.targets.host import describe

    doc = {"host": describe(), "tuning": args.tuning, "latency": args.latency, "kd_precision": args.kd_precision,
           "accuracy": "after the latency stage" if args.sequential_accuracy else "beside the build", "trials": {n: counts.get(n, args.trials) for n in names}, "val_images": args.val_images, "models": results}
    Path(args.json).write_text(json.dumps(doc, indent=2, default=str))


if __name__ == "__main__":
    main()

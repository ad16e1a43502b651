"""The seeds' recipe at real size: greedy mixed-rank allocation under a parameter budget
(arXiv 2402.06004), activation-aware against plain SVD at the same ranks, built and timed.

On a timm model (default ``deit_base_patch16_224``, random init: seeded, so its structure, sizes
and latency are real and its accuracy is not) with a generated ImageFolder at 224 px
(``bench/scale.py``'s), the study file's ``[compression]`` settings:

1. ``greedy-rank`` allocation keeping ``--budget`` of the parameters (``vitune compress
   --strategy greedy-rank``'s :func:`~vitune.compression.allocate.allocate`);
2. the same ranks compressed by plain ``svd``, activation-aware ``aa`` and ``aa-residual`` (the
   seeds' principal term + residual with error compensation, fitted by the default solver;
   ``aa-residual+adam`` or ``aa-residual+als`` name the solver), each in a process of its own:
   wall time and CPU time, peak resident memory, parameters and stored bytes kept, and the output error
   ``‖f̂(x) − f(x)‖ / ‖f(x)‖`` of the final features and of the logits, on the calibration images
   and on held-out (validation) images;
3. in the ``aa-residual`` process, its result and the uncompressed model built as ``apply`` ships them (the
   target's tuning database; unseen workloads tuned with ``--tuning-trials`` MetaSchedule trials
   each, within ``--tuning-budget-s``) and timed in the same interleaved rounds as the
   uncompressed model in the target's best runtime (the faster of ONNX Runtime and OpenVINO on
   a CPU): latencies and speed-ups, with each build's label saying how many of its workloads
   ran tuned kernels.

Accuracy needs the user's ImageNet (pretrained weights and a validation folder); the README's
"Real models" section says how to run the same recipe on it.

    python bench/recipe.py [--model deit_base_patch16_224] [--budget 0.4] [--methods svd,aa,aa-residual[,aa-residual+adam]]
        [--tuning-trials 8] [--tuning-budget-s 1200] [--json F]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
CLASSES = 4


def study_text(model: str, images: Path, method: str, calib_images: int, refine_steps: int, tuning: str, trials: int, budget_s: float) -> str:
    """The study file of one ``method``: a ``lowrank`` method, with ``+als`` or ``+adam`` for
    ``aa-residual`` fitted by that solver (``refine_solver``; without one, the default)."""
    from scale import FRACTIONS

    lowrank, _, solver = method.partition("+")
    solver_line = f'refine_solver = "{solver}"\n' if solver else ""

    fractions = ", ".join(f"{k} = {v}" for k, v in FRACTIONS.items())
    return (f'[study]\nname = "recipe"\n\n[model]\nsource = "timm"\nname = "{model}"\npretrained = false\nnum_classes = {CLASSES}\n\n'
            f'[data]\nsource = "imagefolder"\nroot = "{images}"\nfractions = {{ {fractions} }}\n\n'
            f'[target]\nname = "local-cpu"\nlatency = "measured"\ntuning = "{tuning}"\ntuning_trials = {trials}\n'
            f'tuning_budget_s = {budget_s}\n\n'
            f'[compression]\nlowrank = "{lowrank}"\ncalib_images = {calib_images}\nrefine_steps = {refine_steps}\n{solver_line}')


def rel_error(model, ref_model, dataset, limit: int) -> dict:
    """Relative output error of ``model`` against ``ref_model`` on the first ``limit`` images."""
    import torch

    from vitune.data.splits import iterate

    num = {"features": 0.0, "logits": 0.0}
    den = {"features": 0.0, "logits": 0.0}
    with torch.inference_mode():
        for x, _ in iterate(dataset, 32, limit):
            tokens = model.forward_features(x), ref_model.forward_features(x)  # one pass of each model
            for name, pre_logits in (("features", True), ("logits", False)):
                a, b = (m.forward_head(t, pre_logits=pre_logits) for m, t in zip((model, ref_model), tokens))
                num[name] += float((a - b).pow(2).sum())
                den[name] += float(b.pow(2).sum())
    return {k: (num[k] / den[k]) ** 0.5 for k in num}


def run_method(study: Path, out: Path, error_images: int, timed: bool) -> None:
    """One method (the study file's ``lowrank``): allocate, compress, measure error, and if
    ``timed`` build and time the result (:func:`timings`); in this process."""
    from vitune.compression.allocate import allocate
    from vitune.compression.calibrate import Calibration
    from vitune.compression.pipeline import compress
    from vitune.compression.stats import model_stats
    from vitune.models.layers import discover
    from vitune.models.zoo import load_workspace
    from vitune.search.studyfile import load_study_file

    spec = load_study_file(study)
    ws = load_workspace(spec.model, spec.data, progress=False)
    doc = json.loads(out.read_text())
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    use0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    calib = Calibration.from_dataset(ws.data.calib, spec.methods.calib_images)
    config = allocate("greedy-rank", ws.model, discover(ws.model), calib.x, float(doc["budget"]), spec.methods)
    t_alloc = time.perf_counter() - t0
    details: dict = {}
    model = compress(ws.model, config, train_data=ws.data.train, calibration=calib, report=details)
    t_total = time.perf_counter() - t0
    params, size = model_stats(model)
    base_params, base_size = model_stats(ws.model)
    doc.update({
        "lowrank": spec.methods.lowrank, "refine_solver": spec.methods.refine_solver, "allocate_s": t_alloc, "compress_s": t_total - t_alloc, "wall_s": t_total,
        "cpu_s": (lambda u: u.ru_utime + u.ru_stime - use0.ru_utime - use0.ru_stime)(resource.getrusage(resource.RUSAGE_SELF)),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_before_mb": rss0,
        "params": params, "params_uncompressed": base_params, "params_kept": params / base_params,
        "size_bytes": size, "size_bytes_uncompressed": base_size,
        "ranks": {k: v.rank for k, v in config.linear.items() if v.rank},
        "error_calib": rel_error(model, ws.model, ws.data.calib, error_images),
        "error_val": rel_error(model, ws.model, ws.data.val, error_images),
        "calib_images": spec.methods.calib_images, "config_key": config.key, "config": config.to_dict(),
        # aa-residual: each layer's output loss before and after the error compensation
        "refine": details.get("lowrank", {}),
    })
    out.write_text(json.dumps(doc, indent=1))
    if timed:  # after the compression's figures: the builds' memory is not counted in its peak
        doc["latency"] = timings(spec, ws, model)
        out.write_text(json.dumps(doc, indent=1))


def timings(spec, ws, model) -> dict:
    """``model`` and the uncompressed one built with the target's tuning and timed beside the best
    runtime's uncompressed model (:func:`vitune.baseline.measure_against_baseline`)."""
    from vitune.baseline import TVM_UNCOMPRESSED, measure_against_baseline

    t0 = time.perf_counter()
    m = measure_against_baseline(spec, ws, model, tvm_uncompressed=True)
    base = m.get("baseline", {})
    tvm_ms = base.get("others_ms", {}).get(TVM_UNCOMPRESSED)
    return {**m, "build_and_time_s": time.perf_counter() - t0, "compressed_ms": m["latency_ms"], "uncompressed_tvm_ms": tvm_ms,
            "reference_ms": base.get("latency_ms"), "reference": base.get("label"), "speedup_vs_reference": m.get("speedup"),
            "speedup_vs_tvm_uncompressed": tvm_ms / m["latency_ms"] if tvm_ms and m["latency_ms"] else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="deit_base_patch16_224")
    ap.add_argument("--budget", type=float, default=0.4, help="share of the parameters kept")
    ap.add_argument("--methods", default="svd,aa,aa-residual")
    ap.add_argument("--calib-images", type=int, default=64)
    ap.add_argument("--refine-steps", type=int, default=50)
    ap.add_argument("--error-images", type=int, default=64, help="images the output error is read on, per split")
    ap.add_argument("--images", type=int, default=128, help="validation images of the generated ImageFolder")
    ap.add_argument("--tuning", default="tune", choices=("tune", "database", "off"))
    ap.add_argument("--tuning-trials", type=int, default=8)
    ap.add_argument("--tuning-budget-s", type=float, default=1200.0)
    ap.add_argument("--no-latency", action="store_true")
    ap.add_argument("--work", default=None, help="folder for the images and study files (default: a temporary one)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--_one", nargs=2, help=argparse.SUPPRESS)  # study file, output JSON: one method in this process
    ap.add_argument("--timed", action="store_true", help=argparse.SUPPRESS)  # ... and its result built and timed
    args = ap.parse_args()
    if args._one:
        study, out = map(Path, args._one)
        run_method(study, out, args.error_images, args.timed)
        return

    from scale import make_images

    work = Path(args.work or tempfile.mkdtemp(prefix="vitune-recipe-"))
    work.mkdir(parents=True, exist_ok=True)
    images = make_images(work / "images", args.images)
    t_start = time.perf_counter()
    doc: dict = {"model": args.model, "budget": args.budget, "calib_images": args.calib_images, "refine_steps": args.refine_steps,
                 "tuning": {"mode": args.tuning, "trials_per_workload": args.tuning_trials, "budget_s": args.tuning_budget_s}, "methods": {}}

    def write():
        doc["wall_s"] = time.perf_counter() - t_start
        if args.json:
            Path(args.json).write_text(json.dumps(doc, indent=1))

    for method in args.methods.split(","):
        study = work / f"recipe-{method}.toml"
        study.write_text(study_text(args.model, images, method, args.calib_images, args.refine_steps, args.tuning,
                                    args.tuning_trials, args.tuning_budget_s))
        out = work / f"recipe-{method}.json"
        out.write_text(json.dumps({"budget": args.budget}))
        timed = method == "aa-residual" and not args.no_latency  # the seeds' method is the one shipped
        print(f"{method}: allocating and compressing {args.model} at {args.budget:g} of its parameters"
              + (f", then building it and the uncompressed model ({args.tuning}, {args.tuning_trials} trials per new workload, "
                 f"budget {args.tuning_budget_s:.0f} s) and timing them beside the best runtime" if timed else "") + " ...", flush=True)
        subprocess.run([sys.executable, __file__, "--error-images", str(args.error_images), "--_one", str(study), str(out)]
                       + (["--timed"] if timed else []), check=True)
        row = json.loads(out.read_text())
        doc["methods"][method] = row
        print(f"  {row['params_kept']:.3f} of {row['params_uncompressed']:,} parameters kept; output error (features / logits): "
              f"calibration {row['error_calib']['features']:.4f} / {row['error_calib']['logits']:.4f}, "
              f"held-out {row['error_val']['features']:.4f} / {row['error_val']['logits']:.4f}; "
              f"{row['wall_s']:.1f} s (allocation {row['allocate_s']:.1f} s; CPU {row['cpu_s']:.0f} s), peak RSS {row['peak_rss_mb']:.0f} MB", flush=True)
        write()
    # the methods' configurations differ by their [compression] methods; their ranks must not
    ranks = {json.dumps(row["ranks"], sort_keys=True) for row in doc["methods"].values()}
    doc["same_ranks"] = len(ranks) == 1
    lat = doc["methods"].get("aa-residual", {}).get("latency")
    if lat is not None:
        from vitune.baseline import TVM_UNCOMPRESSED

        doc["latency"] = lat
        if lat["latency_ms"] is None:
            print(f"  {args.model}: aa-residual not timed: {lat['latency_error']}", flush=True)
        else:
            kernels = lat["kernels"]
            print(f"  {args.model}: aa-residual at {args.budget:g} {lat['compressed_ms']:.2f} ms ({kernels['candidate']}), "
                  f"vitune uncompressed {lat['uncompressed_tvm_ms']:.2f} ms ({kernels.get(TVM_UNCOMPRESSED)}), "
                  f"{lat['reference']} {lat['reference_ms']:.2f} ms: {lat['speedup_vs_reference']:.2f}x the best runtime, "
                  f"{lat['speedup_vs_tvm_uncompressed']:.2f}x vitune's uncompressed build", flush=True)
    write()
    if args.json:
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

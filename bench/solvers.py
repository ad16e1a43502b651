"""Error compensation at real size: each ``aa-residual`` refinement solver on the same candidates,
its compression time, how many layers' loss it lowered and the model's output error.

Candidates are drawn from ``bench/scale.py``'s mixed space on a random-init timm model at 224 px
(its generated ImageFolder; Optuna's RandomSampler with ``--seed``), distillation off. With
``--lowrank-only`` every candidate keeps its ranks only (fp32, nothing pruned), so the output
error is the low-rank approximation's alone; otherwise pruning and int8 rounding are in it too.
Each candidate is compressed once per variant, in this process, on the same calibration batch
(``--calib-images`` from the calib split):

* ``none`` — no refinement (the principal + residual terms as the whitened SVD gives them);
* ``adam-N`` — N Adam steps (``adam-N-LR``: at step size LR);
* ``als-N`` — up to N alternating-least-squares sweeps.

Per row: ``compress_s`` (the process's first compression also checks once that the blocks form
a chain: compare variants after the first), ``layers_lower`` (layers whose loss ended below its
start, of ``layers``), ``mean_gain`` (mean relative drop of the layers' loss) and the output
error ``‖f̂(x) − f(x)‖ / ‖f(x)‖`` of the final features and of the logits on ``--error-images``
calibration and held-out (validation) images.

    python bench/solvers.py [--model deit_small] [--configs 2] [--variants none-0,adam-50,als-50]
        [--lowrank-only] [--seed 5] [--json F]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def candidates(space, n: int, seed: int, lowrank_only: bool) -> list:
    """``n`` random configurations of ``space`` without distillation (``lowrank_only``: their
    ranks alone)."""
    import optuna

    from vitune.compression.config import CompressionConfig, LinearConfig

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        config = space.suggest(study.ask()).replace(distill_steps=0)
        if lowrank_only:
            config = CompressionConfig.make({name: LinearConfig(rank=spec.rank) for name, spec in config.linear_items if spec.rank},
                                            {}, {}, 0, config.methods)
        out.append(config)
    return out


def variant_methods(methods, variant: str, calib_images: int):
    """The ``[compression]`` methods of one variant (``none-0``, ``adam-N[-LR]``, ``als-N``)."""
    solver, _, rest = variant.partition("-")
    steps, _, lr = rest.partition("-")
    if solver not in ("none", "adam", "als") or not steps.isdigit():
        raise SystemExit(f"--variants: {variant!r} is not none-0, adam-N[-LR] or als-N")
    extra = {"refine_lr": float(lr)} if lr else {}
    return replace(methods, lowrank="aa-residual", refine_solver="adam" if solver == "none" else solver,
                   refine_steps=0 if solver == "none" else int(steps), calib_images=calib_images, **extra)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="deit_small", help="deit_tiny, deit_small or deit_base")
    ap.add_argument("--configs", type=int, default=2)
    ap.add_argument("--variants", default="none-0,adam-50,als-50")
    ap.add_argument("--lowrank-only", action="store_true", help="ranks only: fp32, nothing pruned")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--calib-images", type=int, default=64)
    ap.add_argument("--error-images", type=int, default=64)
    ap.add_argument("--work", default=None, help="folder for the images and study file (default: a temporary one)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from recipe import rel_error
    from scale import TIMM, bench_study

    from vitune.compression.calibrate import Calibration
    from vitune.compression.pipeline import compress

    if args.model not in TIMM:
        raise SystemExit(f"--model: one of {', '.join(TIMM)}")
    with tempfile.TemporaryDirectory(prefix="vitune-solvers-") as tmp:
        spec, workspace, space = bench_study(args.model, 500, Path(args.work or tmp), "solvers")
        model, data = workspace.model, workspace.data
        calib = Calibration.from_dataset(data.calib, args.calib_images)
        rows = []
        for i, config in enumerate(candidates(space, args.configs, args.seed, args.lowrank_only)):
            for variant in args.variants.split(","):
                report: dict = {}
                t0 = time.perf_counter()
                student = compress(model, config.replace(methods=variant_methods(config.methods, variant, args.calib_images)),
                                   calibration=calib, report=report)
                seconds = time.perf_counter() - t0
                gains = [(r["loss_start"] - r["loss_end"]) / max(r["loss_start"], 1e-30) for r in report.get("lowrank", {}).values()]
                rows.append({
                    "config": i, "summary": config.summary(), "variant": variant, "compress_s": seconds,
                    "layers": len(gains), "layers_lower": sum(g > 0 for g in gains),
                    "mean_gain": sum(gains) / len(gains) if gains else 0.0,
                    "error_calib": rel_error(student, model, data.calib, args.error_images),
                    "error_val": rel_error(student, model, data.val, args.error_images),
                })
                r = rows[-1]
                print(f"candidate {i} ({r['summary']}) {variant}: {seconds:.1f} s, {r['layers_lower']}/{r['layers']} layers lower "
                      f"(mean {100 * r['mean_gain']:.1f} %), error features/logits: calibration {r['error_calib']['features']:.4f} / "
                      f"{r['error_calib']['logits']:.4f}, held-out {r['error_val']['features']:.4f} / {r['error_val']['logits']:.4f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "lowrank_only": args.lowrank_only, "seed": args.seed,
                                               "calib_images": args.calib_images, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()

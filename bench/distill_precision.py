"""Distillation in float32 against bfloat16 autocast (``[compression] kd_precision``), side by
side: the time of the distillation steps, and what the distilled candidate scores.

The study and data are ``bench/scale.py``'s (a mixed space of all four families). Candidates
are ``--configs`` random configurations of that space with ``distill_steps`` forced to
``--steps``. Each is compressed (pruning, low-rank, distillation, quantization: the whole
pipeline, through the study's calibration, so the teacher's side is computed once and served
to both precisions) in float32 and in bfloat16, in ``--rounds`` interleaved rounds; the time
of the distillation steps alone (``distill_s`` of the pipeline's report) is kept as the fastest
of the rounds. Each precision's candidate is deterministic, so its validated accuracy (the
whole validation split, which calibration and training never touch) is read once, with the
top-1 agreement between the two candidates.

On the embedded default model (``digits_vit_base``, trained) the accuracy comparison means
something; on the timm models (random-init, generated images at 224 px) the timing is the point.

    python bench/distill_precision.py [--model digits_vit_base] [--configs 6] [--steps 10]
        [--rounds 2] [--json F]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

PRECISIONS = ("float32", "bfloat16")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="digits_vit_base")
    ap.add_argument("--configs", type=int, default=6)
    ap.add_argument("--steps", type=int, default=10, help="distillation steps of every candidate")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--val-images", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "vitune-scale"))
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import torch
    from scale import bench_study

    from vitune.compression.calibrate import Calibration
    from vitune.compression.pipeline import compress
    from vitune.data.splits import accuracy, predictions

    spec, ws, space = bench_study(args.model, args.val_images, Path(args.work), "distill-precision")
    calib = Calibration.from_dataset(ws.data.calib, spec.methods.calib_images)
    val = ws.data.val
    configs = space.random_configs(args.configs, args.seed, fixed={"distill_steps": args.steps})
    from vitune.targets.host import describe

    host = describe()
    native = host["bf16"]
    print(f"{args.model}: {len(configs)} configurations, {args.steps} distillation steps of {spec.methods.kd_batch_size} images, "
          f"{len(val)} validation images; CPU with avx512_bf16: {native}", flush=True)

    def variant(config, precision):
        return config.replace(methods=dataclasses.replace(config.methods, kd_precision=precision))

    times: dict[int, dict[str, list[float]]] = {i: {p: [] for p in PRECISIONS} for i in range(len(configs))}
    models: dict[int, dict[str, torch.nn.Module]] = {i: {} for i in range(len(configs))}
    losses: dict[int, dict[str, list[float]]] = {i: {} for i in range(len(configs))}
    for r in range(args.rounds):
        for i, config in enumerate(configs):
            order = PRECISIONS if (r + i) % 2 == 0 else PRECISIONS[::-1]  # neither always runs first
            for precision in order:
                report: dict = {}
                t0 = time.perf_counter()
                model = compress(ws.model, variant(config, precision), ws.data.train, calib, report=report)
                wall = time.perf_counter() - t0
                times[i][precision].append(report["distill_s"])
                models[i][precision], losses[i][precision] = model, report["distill_loss"]
                print(f"round {r + 1}/{args.rounds} config {i + 1} {precision}: distillation {report['distill_s']:.2f} s "
                      f"(compression {wall:.2f} s), last loss {report['distill_loss'][-1]:.4f}", flush=True)

    rows = []
    for i, config in enumerate(configs):
        acc = {p: accuracy(models[i][p], val) for p in PRECISIONS}
        agree = float((predictions(models[i]["float32"], val) == predictions(models[i]["bfloat16"], val)).float().mean())
        best = {p: min(times[i][p]) for p in PRECISIONS}
        rows.append({"config": config.summary(), "distill_s": best, "speedup": best["float32"] / best["bfloat16"],
                     "accuracy": acc, "accuracy_delta": acc["bfloat16"] - acc["float32"], "top1_agreement": agree,
                     "last_loss": {p: losses[i][p][-1] for p in PRECISIONS}})
    base_acc = accuracy(ws.model, val)
    print(f"\nuncompressed accuracy {base_acc:.4f}\n{'configuration':52s} {'fp32 s':>7s} {'bf16 s':>7s} {'x':>5s} "
          f"{'acc fp32':>8s} {'acc bf16':>8s} {'delta':>7s} {'agree':>6s}")
    for row in rows:
        print(f"{row['config']:52s} {row['distill_s']['float32']:7.2f} {row['distill_s']['bfloat16']:7.2f} {row['speedup']:5.2f} "
              f"{row['accuracy']['float32']:8.4f} {row['accuracy']['bfloat16']:8.4f} {row['accuracy_delta']:+7.4f} {row['top1_agreement']:6.3f}")
    summary = {
        "speedup_median": statistics.median(r["speedup"] for r in rows),
        "accuracy_delta_mean": statistics.fmean(r["accuracy_delta"] for r in rows),
        "accuracy_delta_max_abs": max(abs(r["accuracy_delta"]) for r in rows),
        "top1_agreement_mean": statistics.fmean(r["top1_agreement"] for r in rows),
    }
    print("median speed-up {speedup_median:.2f}x; accuracy bf16 - fp32: mean {accuracy_delta_mean:+.4f}, "
          "largest {accuracy_delta_max_abs:.4f}; top-1 agreement mean {top1_agreement_mean:.3f}".format(**summary))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "model": args.model, "val_images": len(val), "steps": args.steps, "batch_size": spec.methods.kd_batch_size,
            "rounds": args.rounds, "avx512_bf16": native, "host": host, "torch": torch.__version__, "uncompressed_accuracy": base_acc,
            "command": " ".join(["python", "bench/distill_precision.py", *sys.argv[1:]]), "summary": summary, "candidates": rows,
        }, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

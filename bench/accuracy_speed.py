"""How long reading a candidate's validated accuracy takes at 224 px, the way vitune reads it now
against the way it did before stop 39, side by side.

Before: batches of 256 images, and W8A8 layers multiplied in PyTorch's int32 matmul (no BLAS
kernel on the CPU). Now: batches of 32 (:data:`vitune.data.splits.EVAL_BATCH`) and W8A8 through
:func:`vitune.compression.modules.exact_integer_matmul` (BLAS, bit for bit the int32 result).
The "before" path is reproduced by making the W8A8 forward take its export branch (the int32
matmul the exported graph keeps) and passing ``batch_size=256``.

The study and data are ``bench/scale.py``'s (a mixed space of all four families, a generated
ImageFolder at 224 px with ``--val-images`` validation images, random-init seeded timm weights);
the candidates are the uncompressed model and the first ``--configs`` configurations of the
same random sampler (seed 0): the scale bench's trials. Each candidate is compressed once; the
two ways are then timed in ``--rounds`` interleaved rounds (the fastest kept: the machine is
shared) and must give the same accuracy.

    python bench/accuracy_speed.py [--model deit_tiny] [--configs 5] [--rounds 3] [--json F]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="deit_tiny")
    ap.add_argument("--configs", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--val-images", type=int, default=500)
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "vitune-scale"))
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import optuna
    import torch
    from scale import bench_study

    from vitune.data.splits import EVAL_BATCH, accuracy
    from vitune.search.evaluate import EarlyStop, Evaluator
    from vitune.search.study import latency_source_for

    spec, workspace, space = bench_study(args.model, args.val_images, Path(args.work), "accuracy-speed")
    profile, source, _ = latency_source_for(spec, spec.target, "[target]")
    evaluator = Evaluator(workspace, profile, source, early=EarlyStop(0.0, spec.search.fidelity_images, 1))
    evaluator.calibration(spec.methods.calib_images)
    val = workspace.data.val

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler_study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    candidates = [("uncompressed", workspace.model)]
    for _ in range(args.configs):
        config = space.suggest(sampler_study.ask())
        t0 = time.perf_counter()
        candidates.append((config.summary(), evaluator.compress(config)))
        print(f"compressed {config.summary()} in {time.perf_counter() - t0:.1f} s", flush=True)

    def before(model) -> float:
        real = torch.compiler.is_exporting
        torch.compiler.is_exporting = lambda: True  # W8A8 takes the int32 matmul, as the export traces it
        try:
            return accuracy(model, val, batch_size=256)
        finally:
            torch.compiler.is_exporting = real

    ways = {"before": before, "now": lambda model: accuracy(model, val)}
    times: dict[str, dict[str, list[float]]] = {name: {w: [] for w in ways} for name, _ in candidates}
    accs: dict[str, dict[str, float]] = {name: {} for name, _ in candidates}
    for r in range(args.rounds):
        for name, model in candidates:
            for way, read in ways.items():
                t0 = time.perf_counter()
                accs[name][way] = read(model)
                times[name][way].append(time.perf_counter() - t0)
            print(f"round {r + 1}/{args.rounds} {name}: " + ", ".join(f"{w} {times[name][w][-1]:.2f} s" for w in ways), flush=True)

    rows = []
    for name, _ in candidates:
        best = {w: min(times[name][w]) for w in ways}
        rows.append({"candidate": name, "before_s": best["before"], "now_s": best["now"], "speedup": best["before"] / best["now"],
                     "accuracy_before": accs[name]["before"], "accuracy_now": accs[name]["now"],
                     "w8a8_layers": sum(1 for m in dict(candidates)[name].modules() if type(m).__name__ == "W8A8Linear")})
    print(f"\n{'candidate':48s} {'w8a8':>4s} {'before s':>9s} {'now s':>7s} {'x':>5s}  accuracy (before / now)")
    for row in rows:
        print(f"{row['candidate']:48s} {row['w8a8_layers']:4d} {row['before_s']:9.2f} {row['now_s']:7.2f} {row['speedup']:5.2f}  "
              f"{row['accuracy_before']:.4f} / {row['accuracy_now']:.4f}")
    same = all(r["accuracy_before"] == r["accuracy_now"] for r in rows)
    print("accuracies identical" if same else "ACCURACIES DIFFER")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "model": args.model, "val_images": len(val), "rounds": args.rounds, "eval_batch": EVAL_BATCH,
            "command": " ".join(["python", "bench/accuracy_speed.py", *sys.argv[1:]]), "identical": same, "candidates": rows,
        }, indent=1))
        print(f"wrote {args.json}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()

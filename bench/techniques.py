"""Each compression technique on the default model: size, test accuracy, TVM latency, TVM agreement.

Prints, in one run:

1. one row per technique and level (uncompressed first): parameters, bytes, test accuracy,
   TVM-measured latency on the target, and the TVM build's agreement with PyTorch on the
   validation split (top-1 agreement, largest logit difference);
2. pruning criteria (magnitude / activation / taylor) at 25 % and 50 % of heads and neurons;
3. activation-aware vs plain SVD at equal rank: mean over all linear layers of the output
   error ratio ‖XW − XŴ‖/‖XW‖ (aa / svd) on the default model and on a random-init
   ``deit_tiny_patch16_224`` fed crops of scikit-learn's sample photographs, and whole-model
   test accuracy of svd / aa / aa-residual at rank fractions 0.25 / 0.5 / 0.75;
4. greedy rank allocation vs uniform rank at the same parameter budgets (40 % by default).

    python bench/techniques.py [--target local-cpu] [--json out.json] [--no-deit] [--no-latency]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def _linears(layout, precision="fp32", fraction=None):
    from vitune.compression.config import LinearConfig

    out = {}
    for u in layout.linears:
        rank = None if fraction is None else max(1, round(fraction * min(u.in_features, u.out_features)))
        out[u.name] = LinearConfig(precision, rank)
    return out


def _rows(layout):
    from vitune.compression.config import CompressionConfig
    from vitune.compression.methods import CompressionMethods

    heads = {h.name: 0.0 for h in layout.heads}
    mlps = {m.name: 0.0 for m in layout.mlps}
    rows = [("uncompressed", CompressionConfig.identity())]
    for f in (0.75, 0.5, 0.25, 0.125):
        rows.append((f"low-rank {f} (aa-residual)", CompressionConfig.make(_linears(layout, fraction=f))))
    for r in (0.25, 0.5):
        rows.append((f"prune heads {r:.0%}", CompressionConfig.make(None, {k: r for k in heads})))
    for r in (0.25, 0.5):
        rows.append((f"prune MLP {r:.0%}", CompressionConfig.make(None, None, {k: r for k in mlps})))
    for p in ("fp16", "int8", "int4", "w8a8"):
        rows.append((p, CompressionConfig.make(_linears(layout, p))))
    hard = dict(linear=_linears(layout, fraction=0.125), prune_heads={k: 0.5 for k in heads}, prune_mlp={k: 0.5 for k in mlps})
    rows.append(("rank 0.125 + prune 50 %, KD off", CompressionConfig.make(**hard)))
    rows.append(("rank 0.125 + prune 50 %, KD 300 steps", CompressionConfig.make(**hard, distill_steps=300)))
    rows.append((
        "same, KD 300 steps + token KD",
        CompressionConfig.make(**hard, distill_steps=300, methods=CompressionMethods(kd_hidden_weight=1.0)),
    ))
    rows.append(("rank 0.25 + w8a8", CompressionConfig.make(_linears(layout, "w8a8", 0.25))))
    rows.append(("rank 0.25 + int4", CompressionConfig.make(_linears(layout, "int4", 0.25))))
    return rows


def technique_table(ws, profile, calib, measure_latency: bool) -> list[dict]:
    from vitune.compression.pipeline import compress
    from vitune.compression.stats import model_stats
    from vitune.data.splits import accuracy
    from vitune.models.layers import discover
    from vitune.targets.measure import agreement, measure

    out = []
    print(f"\n1. techniques on the default model (test accuracy; latency: TVM on {profile.name}, batch 1, untuned)")
    print(f"{'technique':<40} {'params':>8} {'bytes':>9} {'test acc':>8} {'latency ms':>10} {'TVM top-1 agree':>15} {'max |dlogit|':>12}")
    for name, config in _rows(discover(ws.model)):
        t0 = time.perf_counter()
        model = compress(ws.model, config, ws.data.train, calib)
        row = {"technique": name, "config": config.to_dict(), "compress_s": time.perf_counter() - t0}
        row["params"], row["size_bytes"] = model_stats(model)
        row["test_accuracy"] = accuracy(model, ws.data.test)
        row["latency_ms"] = row["agreement_val"] = row["max_abs_logit_diff_val"] = None
        if measure_latency:
            compiled = []
            m = measure(model, ws.example_input(1), profile, compiled)
            row["latency_ms"], row["latency_error"] = m.latency_ms, m.error
            if m.ok:
                row["agreement_val"], row["max_abs_logit_diff_val"], _ = agreement(model, compiled[0], profile, ws.data.val)
        lat = f"{row['latency_ms']:.4f}" if row["latency_ms"] is not None else "-"
        agree = f"{row['agreement_val']:.4f}" if row["agreement_val"] is not None else "-"
        diff = f"{row['max_abs_logit_diff_val']:.1e}" if row["max_abs_logit_diff_val"] is not None else "-"
        print(f"{name:<40} {row['params']:>8,} {row['size_bytes']:>9,} {row['test_accuracy']:>8.4f} {lat:>10} {agree:>15} {diff:>12}")
        out.append(row)
    return out


def criteria_table(ws, calib) -> list[dict]:
    from vitune.compression.config import CompressionConfig
    from vitune.compression.methods import CompressionMethods
    from vitune.compression.pipeline import compress
    from vitune.data.splits import accuracy
    from vitune.models.layers import discover

    layout = discover(ws.model)
    out = []
    print("\n2. pruning criteria (test accuracy; heads and MLP neurons of every block pruned at the same share)")
    print(f"{'criterion':<12} {'heads 25%':>9} {'heads 50%':>9} {'MLP 25%':>9} {'MLP 50%':>9} {'both 25%':>9} {'both 50%':>9}")
    for crit in ("magnitude", "activation", "taylor"):
        m = CompressionMethods(prune_criterion=crit)
        row = {"criterion": crit}
        for kind in ("heads", "mlp", "both"):
            for r in (0.25, 0.5):
                heads = {h.name: r for h in layout.heads} if kind in ("heads", "both") else {}
                mlps = {u.name: r for u in layout.mlps} if kind in ("mlp", "both") else {}
                row[f"{kind}_{r}"] = accuracy(compress(ws.model, CompressionConfig.make(None, heads, mlps, methods=m), calibration=calib), ws.data.test)
        print(f"{crit:<12} " + " ".join(f"{row[f'{k}_{r}']:>9.4f}" for k in ("heads", "mlp", "both") for r in (0.25, 0.5)))
        out.append(row)
    return out


def _error_ratios(model, x) -> dict:
    from vitune.compression.calibrate import capture_inputs
    from vitune.compression.lowrank import factorize, factorize_aa, output_error
    from vitune.models.layers import discover

    layers = [u.name for u in discover(model).linears]
    result = {}
    for f in (0.25, 0.5, 0.75):
        ratios, plain_errs, aa_errs = [], [], []
        for name in layers:  # one layer at a time: a ViT-B's activations would not fit at once
            inputs = capture_inputs(model, [name], x)[name]
            layer = model.get_submodule(name)
            rank = max(1, round(f * min(layer.in_features, layer.out_features)))
            plain = output_error(layer, factorize(layer, rank), inputs)
            aware = output_error(layer, factorize_aa(layer, rank, inputs), inputs)
            plain_errs.append(plain)
            aa_errs.append(aware)
            ratios.append(aware / max(plain, 1e-12))
        result[f] = {"mean_ratio": statistics.mean(ratios), "max_ratio": max(ratios), "mean_error_svd": statistics.mean(plain_errs), "mean_error_aa": statistics.mean(aa_errs), "layers": len(layers)}
    return result


def _photo_crops(n: int, size: int = 224, seed: int = 0):
    """Random crops of scikit-learn's two sample photographs, ImageNet-normalised (N, 3, size, size)."""
    import numpy as np
    import torch
    from sklearn.datasets import load_sample_images

    photos = [np.asarray(p, dtype=np.float32) / 255.0 for p in load_sample_images().images]
    rng = np.random.default_rng(seed)
    crops = []
    for i in range(n):
        img = photos[i % len(photos)]
        top = rng.integers(0, img.shape[0] - size)
        left = rng.integers(0, img.shape[1] - size)
        crops.append(img[top : top + size, left : left + size].transpose(2, 0, 1))
    x = torch.tensor(np.stack(crops))
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    return (x - mean) / std


def lowrank_tables(ws, calib, deit: bool) -> dict:
    from vitune.compression.config import CompressionConfig
    from vitune.compression.methods import CompressionMethods
    from vitune.compression.pipeline import compress
    from vitune.data.splits import accuracy
    from vitune.models.layers import discover

    out = {"error_ratio": {}, "accuracy": {}}
    print("\n3a. activation-aware vs plain SVD at equal rank: output error ‖XW − XŴ‖/‖XW‖ averaged over all linear layers")
    print(f"{'model':<34} {'rank frac':>9} {'err svd':>8} {'err aa':>8} {'aa/svd mean':>11} {'aa/svd max':>10}")
    models = [("default digits ViT", ws.model, calib.x)]
    if deit:
        import timm
        import torch

        torch.manual_seed(0)
        models.append(("deit_tiny_patch16_224 (random init)", timm.create_model("deit_tiny_patch16_224", pretrained=False).eval(), _photo_crops(32)))
    for label, model, x in models:
        ratios = _error_ratios(model, x)
        out["error_ratio"][label] = ratios
        for f, r in ratios.items():
            print(f"{label:<34} {f:>9} {r['mean_error_svd']:>8.4f} {r['mean_error_aa']:>8.4f} {r['mean_ratio']:>11.3f} {r['max_ratio']:>10.3f}")

    print("\n3b. whole default model, every linear layer at the same rank fraction: test accuracy, and KL(original ‖ compressed)")
    print("    on the test images (fidelity to the uncompressed model's predictions; lower is closer)")
    print(f"{'rank frac':>9} {'svd':>8} {'aa':>8} {'aa-residual':>11} {'KL svd':>8} {'KL aa':>8} {'KL aa-res':>9}")
    layout = discover(ws.model)
    for f in (0.25, 0.5, 0.75, 0.125):
        row = {}
        for method in ("svd", "aa", "aa-residual"):
            cfg = CompressionConfig.make(_linears(layout, fraction=f), methods=CompressionMethods(lowrank=method))
            model = compress(ws.model, cfg, calibration=calib)
            row[method] = accuracy(model, ws.data.test)
            row[f"kl_{method}"] = _kl_to_original(ws, model)
        out["accuracy"][f] = row
        print(f"{f:>9} {row['svd']:>8.4f} {row['aa']:>8.4f} {row['aa-residual']:>11.4f} {row['kl_svd']:>8.4f} {row['kl_aa']:>8.4f} {row['kl_aa-residual']:>9.4f}")
    return out


def _kl_to_original(ws, model) -> float:
    import torch
    import torch.nn.functional as F

    x = torch.stack([ws.data.test[i][0] for i in range(len(ws.data.test))])
    with torch.no_grad():
        return float(F.kl_div(F.log_softmax(model(x), -1), F.softmax(ws.model(x), -1), reduction="batchmean"))


def allocation_table(ws, calib, budgets) -> list[dict]:
    from vitune.compression.allocate import allocate
    from vitune.compression.pipeline import compress
    from vitune.compression.stats import model_stats
    from vitune.data.splits import accuracy
    from vitune.models.layers import discover

    layout = discover(ws.model)
    base = model_stats(ws.model)[0]
    out = []
    print("\n4. rank allocation under a parameter budget (aa-residual factors): test accuracy")
    print(f"{'budget':>6} {'strategy':<13} {'params':>8} {'share':>6} {'test acc':>8} {'val acc':>8}  ranks")
    for budget in budgets:
        for strategy in ("greedy-rank", "uniform-rank"):
            cfg = allocate(strategy, ws.model, layout, calib.x, budget)
            model = compress(ws.model, cfg, calibration=calib)
            params = model_stats(model)[0]
            row = {"budget": budget, "strategy": strategy, "params": params, "share": params / base,
                   "test_accuracy": accuracy(model, ws.data.test), "val_accuracy": accuracy(model, ws.data.val),
                   "ranks": {k: v.rank for k, v in cfg.linear_items}}
            ranks = sorted(set(row["ranks"].values()))
            print(f"{budget:>6} {strategy:<13} {params:>8,} {row['share']:>6.3f} {row['test_accuracy']:>8.4f} {row['val_accuracy']:>8.4f}  {ranks[0]}..{ranks[-1]}")
            out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="local-cpu")
    parser.add_argument("--json", default=None, help="write every figure printed to this file")
    parser.add_argument("--no-deit", action="store_true", help="skip the random-init deit_tiny error table")
    parser.add_argument("--no-latency", action="store_true", help="skip TVM builds (accuracy and size only)")
    parser.add_argument("--budgets", default="0.4,0.25,0.15", help="parameter budgets for the allocation table")
    args = parser.parse_args()

    import torch

    from vitune.compression.calibrate import Calibration
    from vitune.models.zoo import load_workspace
    from vitune.search.studyfile import DataSpec, ModelSpec
    from vitune.targets import load_target
    from vitune.versions import versions

    torch.manual_seed(0)
    profile = load_target(args.target)
    ws = load_workspace(ModelSpec(), DataSpec())
    calib = Calibration.from_dataset(ws.data.calib, 256)
    print(f"default model: {ws.ref.name}, calibration images: {len(calib.x)} (calib split), test images: {len(ws.data.test)}")
    t0 = time.perf_counter()
    report = {
        "target": profile.describe(),
        "versions": versions(),
        "techniques": technique_table(ws, profile, calib, not args.no_latency),
        "pruning_criteria": criteria_table(ws, calib),
        "lowrank": lowrank_tables(ws, calib, not args.no_deit),
        "allocation": allocation_table(ws, calib, [float(b) for b in args.budgets.split(",")]),
    }
    report["seconds"] = time.perf_counter() - t0
    print(f"\nbench took {report['seconds']:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

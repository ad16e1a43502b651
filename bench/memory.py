"""The seeds' claim, memory side: greedy rank allocation at a parameter budget against vitune's
search under a model-size limit of the same bytes, on DeiT-B (issue 23, item 3).

On a timm model (default ``deit_base_patch16_224``, random init: seeded, so its structure,
sizes, memory and latency are real; its accuracy is not) and a generated ImageFolder at 224 px
(``bench/scale.py``'s images), **relabelled by the uncompressed model's own predictions** (its
head set first to the features' principal directions, see :func:`relabel`): every image's class is the uncompressed model's top-1, so the uncompressed model scores 100 % and a
compressed model's "accuracy" is its top-1 agreement with the uncompressed one (what a user
with ImageNet reads as accuracy retained; random weights have no ImageNet accuracy to keep).
Then, in this process:

1. **greedy**: ``vitune compress --strategy greedy-rank --params-budget B``'s allocation
   (:func:`~vitune.compression.allocate.allocate`), compressed with activation-aware low rank;
   its stored bytes set the limit ``L`` for the search;
2. **search**: a vitune study (the default sampler with its warm start, early stopping, a Pareto
   front of validated accuracy against latency) over a mixed space: per kind of linear layer
   (``qkv``, ``proj``, ``fc1``, ``fc2``, tied across blocks) fp32 / int8 / w8a8 and rank 1 / 0.5
   / 0.25, a third of the heads and a quarter or half of the MLP neurons pruned (tied across
   blocks). Its latency during the search is **predicted** by the analytical cost model
   (uncalibrated: a ranking proxy, labelled so in the study; a DeiT-B build per trial costs
   minutes); at the end the study re-measures its front members as it always does with a
   predicted latency (the target's tuning database: kernels it lacks run untuned there). The pick is ``vitune export --pick fastest --max-drop D --max-model-mb L``: the
   fastest front member within ``D`` of the uncompressed accuracy and within the greedy model's
   bytes;
3. **side by side**: both models (and, with ``--tvm-uncompressed``, the uncompressed one) are built as ``apply`` ships them (the
   target's tuning database; workloads it lacks are tuned now, ``--tuning-trials`` each within
   ``--tuning-budget-s``) and timed in the same interleaved rounds as the uncompressed model in
   the target's best runtime (the faster of ONNX Runtime and OpenVINO on a CPU). For each:
   stored bytes (``model_bytes``), the build's planned peak memory at batch 1
   (``peak_memory_bytes``: weights + planned activations + input; ``vitune/targets/memory.py``),
   parameters, validation and test agreement with the uncompressed model, tuned latency.

Both compress with the same low-rank method (``--lowrank``, ``aa`` by default: at DeiT-B size the
residual's Adam steps cost minutes and did not change the result, see the README's recipe
section), so the comparison is between allocations, not solvers.

    python bench/memory.py [--model deit_base_patch16_224] [--budget 0.4] [--trials 24]
        [--val-images 200] [--no-warm-start] [--tuning-trials 8] [--tuning-budget-s 1500] [--tvm-uncompressed] [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
CLASSES = 4
FRACTIONS = {"train": 0.05, "calib": 0.15, "val": 0.4, "test": 0.4}

from scale import MENUS  # noqa: E402  (bench/ is on the path from here)

SPACE = MENUS + "".join(f'\n[[space.tie]]\nlayers = "blocks.*.{unit}"\nknobs = ["precision", "rank_fraction"]\n'
                        for unit in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")) + """
[[space.tie]]
layers = "blocks.*.attn"
knobs = ["prune_heads"]

[[space.tie]]
layers = "blocks.*.mlp"
knobs = ["prune_mlp"]
"""


def study_text(name: str, model: str, images: Path, lowrank: str, calib_images: int, trials: int, tuning_trials: int, budget_s: float,
               checkpoint: Path | None = None, latency: str = "analytical", warm_start: bool = True) -> str:
    fractions = ", ".join(f"{k} = {v}" for k, v in FRACTIONS.items())
    return (f'[study]\nname = "{name}"\nn_trials = {trials}\nseed = 0\n\n'
            f'[model]\nsource = "timm"\nname = "{model}"\npretrained = false\nnum_classes = {CLASSES}\n'
            + (f'checkpoint = "{checkpoint}"\n' if checkpoint else "") + "\n"
            + f'[data]\nsource = "imagefolder"\nroot = "{images}"\nfractions = {{ {fractions} }}\n\n'
            f'[target]\nname = "local-cpu"\nlatency = "{latency}"\ntuning = "database"\ntuning_trials = {tuning_trials}\n'
            f'tuning_budget_s = {budget_s}\n\n'
            f'[compression]\nlowrank = "{lowrank}"\ncalib_images = {calib_images}\n\n'
            f'[search]\nwarm_start = {str(warm_start).lower()}\n' + SPACE)


def relabel(raw: Path, out: Path, study: Path, checkpoint: Path) -> dict[str, int]:
    """A checkpoint and a relabelled tree for the bench's study.

    A random-init ViT gives nearly the same logits to every image (its top-1 is one class for
    nearly all of them), so its head is replaced first by the directions that tell the images
    apart in its features: with ``z1, z2`` the images' projections on the first two principal
    components of the pre-logit features (over the images of ``raw``), less their medians, over
    their standard deviations, the logits are ``(z1, -z1, z2, -z2)`` plus offsets that give each
    class at least 80 % of an equal share of the images (``head.weight`` and ``head.bias`` set;
    nothing else changes). A compressed model that loses those directions disagrees. That
    model is saved as ``checkpoint`` (the study's ``[model] checkpoint``) and ``out`` gets the images
    of ``raw`` (hard links), each under the class it predicts, through the transforms a study
    applies. Returns the count per class; every class must be predicted at least once."""
    import torch
    from torchvision.datasets import ImageFolder

    from vitune.data.imagefolder import eval_transform
    from vitune.data.splits import iterate
    from vitune.models.zoo import load_workspace
    from vitune.search.studyfile import load_study_file

    done = out / ".complete"
    if done.exists() and checkpoint.exists():
        return json.loads(done.read_text())
    spec = load_study_file(study)
    ws = load_workspace(spec.model, spec.data, progress=False)
    model = ws.model
    folder = ImageFolder(str(raw), transform=eval_transform(model)[0])  # the transforms a study applies

    def outputs(pre_logits: bool) -> torch.Tensor:
        with torch.inference_mode():
            return torch.cat([model.forward_head(model.forward_features(x), pre_logits=pre_logits) for x, _ in iterate(folder, 32)])

    feats = outputs(True).double()
    mean = feats.mean(0)
    _, _, v = torch.linalg.svd(feats - mean, full_matrices=False)
    dirs = v[:2]  # (2, features)
    proj = (feats - mean) @ dirs.T
    centre, scale = proj.median(0).values, proj.std(0)  # the median: each sign holds half the images
    signs = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=feats.dtype)
    which = torch.tensor([0, 0, 1, 1])
    rows = signs[:, None] * dirs[which] / scale[which, None]
    bias = -rows @ mean - signs * centre[which] / scale[which]
    logits = feats @ rows.T + bias
    for _ in range(2000):  # offsets that give each class about a quarter of the images (their clusters are not symmetric)
        counts = torch.bincount(logits.argmax(1), minlength=CLASSES).to(feats.dtype)
        if counts.min() >= 0.8 * len(feats) / CLASSES:
            break
        step = 0.01 * (len(feats) / CLASSES - counts) / len(feats)
        bias, logits = bias + step, logits + step
    with torch.no_grad():
        model.head.weight.copy_(rows.float())
        model.head.bias.copy_(bias.float())
    torch.save(model.state_dict(), checkpoint)
    preds = outputs(False).argmax(1).tolist()
    counts = {f"class_{c}": preds.count(c) for c in range(CLASSES)}
    if min(counts.values()) == 0:
        raise SystemExit(f"the model with its new head predicts no image as some class ({counts}): use more images or fewer classes")
    for (path, _), p in zip(folder.samples, preds):
        target = out / f"class_{p}" / f"{Path(path).parent.name}-{Path(path).name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            os.link(path, target)
    done.write_text(json.dumps(counts))
    return counts


def figures(model, ws) -> dict:
    from vitune.compression.stats import model_stats
    from vitune.data.splits import accuracy

    params, size = model_stats(model)
    return {"params": params, "model_bytes": size, "val_agreement": accuracy(model, ws.data.val), "test_agreement": accuracy(model, ws.data.test)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="deit_base_patch16_224")
    ap.add_argument("--budget", type=float, default=0.4, help="share of the parameters the greedy allocation keeps")
    ap.add_argument("--lowrank", default="aa", help="low-rank method of both (the study file's [compression] lowrank)")
    ap.add_argument("--calib-images", type=int, default=64)
    ap.add_argument("--trials", type=int, default=24, help="trials of the search (its warm start's included)")
    ap.add_argument("--no-warm-start", action="store_true",
                    help="no sensitivity sweep (on DeiT-B it is 26 compressions and accuracy passes: the bulk of the search's time)")
    ap.add_argument("--max-drop", type=float, default=0.01, help="the export's accuracy (agreement) drop allowed")
    ap.add_argument("--val-images", type=int, default=200, help="images of the generated tree's validation split (before relabelling)")
    ap.add_argument("--tuning-trials", type=int, default=8)
    ap.add_argument("--tuning-budget-s", type=float, default=1500.0)
    ap.add_argument("--tvm-uncompressed", action="store_true", help="also build and time vitune's uncompressed build")
    ap.add_argument("--work", default=None, help="folder for the images, study files and study (default: a temporary one)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import scale

    from vitune import api
    from vitune.baseline import TVM_UNCOMPRESSED
    from vitune.compression.allocate import allocate
    from vitune.compression.calibrate import Calibration
    from vitune.compression.config import CompressionConfig
    from vitune.compression.pipeline import compress
    from vitune.errors import VituneError
    from vitune.models.layers import discover
    from vitune.models.zoo import load_workspace
    from vitune.targets import load_target
    from vitune.targets.compile import compile_model
    from vitune.targets.memory import MIB
    from vitune.targets.peers import build_label, measure_baseline
    from vitune.targets.tuning import Tuner

    t_start = time.perf_counter()
    work = Path(args.work or tempfile.mkdtemp(prefix="vitune-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    raw = scale.make_images(work / "images", args.val_images, val_share=FRACTIONS["val"])
    study = work / "memory-search.toml"
    labelled = work / "labelled"
    from vitune.targets.host import describe

    doc: dict = {"host": describe(), "model": args.model, "budget": args.budget, "lowrank": args.lowrank, "calib_images": args.calib_images,
                 "trials": args.trials, "max_drop": args.max_drop,
                 "tuning": {"mode": "tune", "trials_per_workload": args.tuning_trials, "budget_s": args.tuning_budget_s}}

    def write():
        doc["wall_s"] = time.perf_counter() - t_start
        if args.json:
            Path(args.json).write_text(json.dumps(doc, indent=1))

    def text(images: Path, checkpoint: Path | None = None) -> str:
        return study_text("memory-search", args.model, images, args.lowrank, args.calib_images, args.trials, args.tuning_trials,
                          args.tuning_budget_s, checkpoint, warm_start=not args.no_warm_start)

    study.write_text(text(raw))
    print(f"setting {args.model}'s head to its features' principal directions and relabelling {raw} by its predictions ...", flush=True)
    t0 = time.perf_counter()
    checkpoint = work / "principal-head.pth"
    doc["classes"] = relabel(raw, labelled, study, checkpoint)
    doc["relabel_s"] = time.perf_counter() - t0
    print(f"  {doc['classes']} in {doc['relabel_s']:.0f} s", flush=True)
    study.write_text(text(labelled, checkpoint))
    spec = api.load_study(study)
    ws = load_workspace(spec.model, spec.data, progress=False)
    doc["split_images"] = {"val": len(ws.data.val), "test": len(ws.data.test), "calib": len(ws.data.calib)}

    # 1. greedy
    print(f"greedy-rank allocation at {args.budget:g} of the parameters ({args.lowrank}) ...", flush=True)
    t0 = time.perf_counter()
    calib = Calibration.from_dataset(ws.data.calib, spec.methods.calib_images)
    greedy_config = allocate("greedy-rank", ws.model, discover(ws.model), calib.x, args.budget, spec.methods)
    greedy = compress(ws.model, greedy_config, train_data=ws.data.train, calibration=calib)
    doc["greedy"] = {"compress_s": time.perf_counter() - t0, "config": greedy_config.to_dict(), **figures(greedy, ws)}
    limit_mb = doc["greedy"]["model_bytes"] / MIB
    doc["limit_model_mb"] = limit_mb
    doc["uncompressed"] = figures(ws.model, ws)
    print(f"  {doc['greedy']['params']:,} parameters, {limit_mb:.1f} MiB (uncompressed {doc['uncompressed']['model_bytes'] / MIB:.1f}), "
          f"agreement val {doc['greedy']['val_agreement']:.3f} in {doc['greedy']['compress_s']:.0f} s", flush=True)
    write()

    # 2. the search
    print(f"search: {args.trials} trials, latency predicted (analytical), then export --pick fastest --max-drop {args.max_drop} "
          f"--max-model-mb {limit_mb:.1f} ...", flush=True)
    t0 = time.perf_counter()
    summary = api.run(spec, progress=True, log=lambda line: print(f"  {line}", flush=True))  # no terminal: a line per step
    doc["search_s"] = time.perf_counter() - t0
    doc["search_summary"] = str(summary)
    try:
        record = api.export(spec, "fastest", work / "pick.json", max_drop=args.max_drop, max_model_mb=limit_mb)
        doc["pick"] = f"fastest within {args.max_drop:g} of the uncompressed accuracy and {limit_mb:.1f} MiB"
    except VituneError as err:  # no member that close: the most accurate within the bytes
        print(f"  {err}; exporting the most accurate front member within {limit_mb:.1f} MiB instead", flush=True)
        doc["pick"] = f"best within {limit_mb:.1f} MiB (none within {args.max_drop:g} of the uncompressed accuracy)"
        try:
            record = api.export(spec, "best", work / "pick.json", max_model_mb=limit_mb)
        except VituneError as err2:
            doc["search_error"] = str(err2)
            write()
            raise SystemExit(f"the search found no candidate within the greedy model's bytes: {err2}") from None
    pick_config = CompressionConfig.from_dict(record["config"], where="export config").validate(discover(ws.model))
    calib = Calibration.from_dataset(ws.data.calib, pick_config.methods.calib_images)
    picked = compress(ws.model, pick_config, train_data=ws.data.train, calibration=calib)
    doc["search"] = {"trial": record["study"]["trial"], "predicted_latency_ms": record["metrics"]["latency_ms"],
                     "summary": record["summary"], "config": record["config"], **figures(picked, ws)}
    view = api.view(spec)
    doc["search"]["front"] = [{"number": t.number, "accuracy": t.accuracy, "predicted_latency_ms": t.latency_ms, "origin": t.origin,
                               "model_mb": t.size_bytes / MIB if t.size_bytes else None, "summary": t.summary} for t in view.front]
    doc["search"]["trials"] = [{"number": t.number, "state": t.state, "accuracy": t.accuracy, "predicted_latency_ms": t.latency_ms,
                                "model_mb": t.size_bytes / MIB if t.size_bytes else None, "origin": t.origin, "reason": t.reason,
                                "duration_s": t.duration_s} for t in view.trials]
    print(f"  trial {doc['search']['trial']}: {doc['search']['params']:,} parameters, {doc['search']['model_bytes'] / MIB:.1f} MiB, "
          f"agreement val {doc['search']['val_agreement']:.3f} ({doc['search_s']:.0f} s)", flush=True)
    write()

    # 3. built as apply ships them, timed side by side with the best runtime's uncompressed model
    print(f"building both{' and the uncompressed model' if args.tvm_uncompressed else ''} (tuned, {args.tuning_trials} trials per new "
          "workload) and timing them beside the best runtime's uncompressed model ...", flush=True)
    t0 = time.perf_counter()
    profile = load_target(spec.target.name)
    tuner = Tuner(profile, "tune", args.tuning_trials, args.tuning_budget_s)
    example = ws.example_input(1)
    try:
        builds = {"search": compile_model(picked, example, profile, tuner), "greedy": compile_model(greedy, example, profile, tuner)}
        if args.tvm_uncompressed:
            builds[TVM_UNCOMPRESSED] = compile_model(ws.model, example, profile, tuner)
    finally:
        tuner.close()
    doc["build_s"] = time.perf_counter() - t0
    base = measure_baseline(ws.model, example, profile, candidate=builds["search"], rounds=5,
                            others={k: v for k, v in builds.items() if k != "search"})
    doc["baseline"] = base.to_dict()
    timed = {"search": base.candidate_ms, **base.others_ms}
    for name, built in builds.items():
        row = doc.setdefault("uncompressed" if name == TVM_UNCOMPRESSED else name, {})
        row.update({"latency_ms": timed.get(name), "kernels": build_label(built), "peak_memory_bytes": built.peak_memory_bytes,
                    "memory": built.memory.to_dict() if built.memory is not None else None,
                    "speedup_vs_best_runtime": base.latency_ms / timed[name] if timed.get(name) and base.latency_ms else None})
    doc["best_runtime"] = {"label": base.label, "latency_ms": base.latency_ms}
    doc["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    write()
    for name in ("greedy", "search"):
        r = doc[name]
        print(f"  {name}: {r['model_bytes'] / MIB:.1f} MiB stored, peak {r['peak_memory_bytes'] / MIB if r['peak_memory_bytes'] else float('nan'):.1f} MiB, "
              f"{r['latency_ms'] or float('nan'):.2f} ms ({r['kernels']}), agreement val {r['val_agreement']:.3f} test {r['test_agreement']:.3f}", flush=True)
    print(f"  {base.label}: {base.latency_ms:.2f} ms", flush=True)
    if args.json:
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

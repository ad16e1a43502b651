"""Latency of TVM builds against PyTorch eager and ONNX Runtime, and tuning throughput.

Prints, in one run on the target's CPU at batch 1 (same thread count everywhere):

1. for the uncompressed default digits ViT and a random-init ``deit_tiny_patch16_224``:
   PyTorch eager, ONNX Runtime, TVM untuned and TVM tuned (MetaSchedule, vitune's per-target
   database) — each timed by the target's protocol (its statistic: median or min of the
   repeats) — and ratios to ONNX Runtime, with the tuning time it took;
2. tuning throughput — candidates built and measured per second — of MetaSchedule's default
   ``LocalBuilder``/``LocalRunner`` (process pools) and of vitune's in-process pair, on the
   same workloads and trial count.

    python bench/latency.py [--trials-per-task 64] [--fresh] [--no-deit] [--json out.json]

``--fresh`` tunes into an empty database (so the tuning time is the full cost); without it the
target's persistent database is used and reused. Needs ``pip install onnx onnxruntime``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path


def _timed(fn, protocol) -> list[float]:
    """Samples (ms per run) of ``fn`` taken the way the target's protocol times TVM builds."""
    for _ in range(protocol.warmup):
        fn()
    t0 = time.perf_counter()
    fn()
    once = max((time.perf_counter() - t0) * 1e3, 1e-3)
    number = protocol.number or max(1, int(protocol.min_repeat_ms / once) + 1)
    samples = []
    for i in range(protocol.repeat):
        if i and protocol.cooldown_ms:
            time.sleep(protocol.cooldown_ms / 1e3)  # as time_evaluator's cooldown_interval_ms
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        samples.append((time.perf_counter() - t0) * 1e3 / number)
    return samples


def eager_fn(model, x, threads: int):
    import torch

    torch.set_num_threads(threads)

    def run():
        with torch.inference_mode():
            model(x)

    return run


def onnxruntime_fn(model, x, threads: int):
    import warnings

    import onnxruntime as ort
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x.numpy()}
    return lambda: session.run(None, feed)


PEERS = ("eager", "onnxruntime", "tvm_untuned", "tvm_tuned")


def model_rows(label, model, x, profile, trials_per_task: int, rounds: int) -> dict:
    """Tune and build first; then time the four peers in ``rounds`` interleaved rounds (eager,
    ORT, untuned, tuned, eager, ...), so a burst of load on a shared machine falls on all of them
    alike; each latency is the protocol's statistic over all its rounds' samples."""
    from vitune.targets.compile import compile_model
    from vitune.targets.runner import runner_for
    from vitune.targets.tuning import Tuner

    threads = profile.threads
    row = {"model": label, "threads": threads, "statistic": profile.protocol.statistic, "rounds": rounds}
    tuner = Tuner(profile, "tune", trials_per_task)
    builds = {"tvm_untuned": compile_model(model, x, profile), "tvm_tuned": compile_model(model, x, profile, tuner)}
    runner = runner_for(profile)
    xs = x.numpy()
    fns = {"eager": eager_fn(model, x, threads), "onnxruntime": onnxruntime_fn(model, x, threads)}
    for name, compiled in builds.items():
        fns[name] = lambda c=compiled: runner.time(c, xs, profile.protocol)
    samples: dict[str, list[float]] = {k: [] for k in PEERS}
    for _ in range(rounds):
        for name in PEERS:
            fn = fns[name]
            samples[name] += fn() if name.startswith("tvm") else _timed(fn, profile.protocol)
    for name in PEERS:
        row[f"{name}_ms"] = profile.protocol.latency_ms(samples[name])
    rep = tuner.report
    row["tuning"] = {"seconds": rep.seconds, "workloads": rep.workloads, "from_database": rep.from_database, "tuned": rep.tuned,
                     "untuned": rep.untuned, "candidates": rep.trials, "trials_per_task": trials_per_task}
    ort_ms = row["onnxruntime_ms"]
    for k in ("eager_ms", "tvm_untuned_ms", "tvm_tuned_ms"):
        row[k.replace("_ms", "_vs_ort")] = row[k] / ort_ms
    return row


def throughput(profile, trials: int) -> list[dict]:
    """Tune the same two workloads with MetaSchedule's default builder/runner and with ours."""
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms

    from vitune.targets.check import probe_model
    from vitune.targets.compile import export_relax
    from vitune.targets.msinproc import InProcessBuilder, InProcessRunner
    from vitune.targets.tuning import import_tensor_intrinsics

    import_tensor_intrinsics()
    model, x = probe_model()
    mod, _ = export_relax(model, x)
    target = profile.tvm()
    mod = relax.get_pipeline("zero")(mod)
    tasks = [t for t in ms.relax_integration.extract_tasks(mod, target) if "matmul" in t.task_name][:2]
    out = []
    for label in ("MetaSchedule LocalBuilder + LocalRunner (process pools)", "vitune InProcessBuilder + InProcessRunner"):
        with tempfile.TemporaryDirectory() as work:
            strategy = ms.search_strategy.EvolutionarySearch(population_size=64, init_min_unmeasured=8, genetic_num_iters=3)
            contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(tasks, work, strategy=strategy, num_threads=profile.threads)
            db = ms.database.MemoryDatabase()
            if label.startswith("vitune"):
                builder, runner = InProcessBuilder(), InProcessRunner()
                callbacks = [ms.measure_callback.AddToDatabase(), ms.measure_callback.UpdateCostModel()]
            else:
                builder, runner = ms.builder.LocalBuilder(max_workers=profile.threads), ms.runner.LocalRunner()
                callbacks = "default"
            logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)  # tune_tasks resets it
            t0 = time.perf_counter()
            ms.tune.tune_tasks(tasks=contexts, task_weights=weights, work_dir=work, max_trials_global=trials * len(tasks),
                               max_trials_per_task=trials, num_trials_per_iter=min(16, trials), builder=builder, runner=runner,
                               database=db, cost_model="xgb", measure_callbacks=callbacks, task_scheduler="gradient")
            seconds = time.perf_counter() - t0
            records = sum(1 for _ in db.get_all_tuning_records())
            valid = sum(1 for r in db.get_all_tuning_records() if r.run_secs and all(float(s) < 1e9 for s in r.run_secs))
        out.append({"pair": label, "seconds": seconds, "records": records, "valid": valid, "per_second": records / seconds})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="local-cpu")
    parser.add_argument("--trials-per-task", type=int, default=64)
    parser.add_argument("--throughput-trials", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds of the four peers")
    parser.add_argument("--fresh", action="store_true", help="tune into an empty database")
    parser.add_argument("--no-deit", action="store_true")
    parser.add_argument("--json", default=None, help="write every figure printed to this file")
    args = parser.parse_args()

    if args.fresh:  # an empty cache for tuning records, the same trained models
        from vitune import paths

        models_dir = paths.cache_dir() / "models"
        fresh = Path(tempfile.mkdtemp(prefix="vitune-fresh-"))
        if models_dir.exists():
            (fresh / "models").symlink_to(models_dir, target_is_directory=True)
        os.environ["VITUNE_CACHE_DIR"] = str(fresh)

    import torch

    from vitune.models.zoo import load_workspace
    from vitune.search.studyfile import DataSpec, ModelSpec
    from vitune.targets import load_target
    from vitune.versions import versions

    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
    profile = load_target(args.target)
    ws = load_workspace(ModelSpec(), DataSpec())
    models = [("default digits ViT (4 blocks, 8x8)", ws.model.eval(), ws.example_input(1))]
    if not args.no_deit:
        import timm

        torch.manual_seed(0)
        models.append(("deit_tiny_patch16_224 (random init)", timm.create_model("deit_tiny_patch16_224", pretrained=False).eval(), torch.randn(1, 3, 224, 224)))

    report = {"target": profile.describe(), "versions": versions(), "models": [], "throughput": []}
    print(f"1. batch-1 latency on {profile.name} ({profile.tvm_target}), {profile.threads} threads everywhere; "
          f"{profile.protocol.statistic} of the repeats in ms, every peer timed by the target's protocol in {args.rounds} interleaved rounds")
    print(f"{'model':<38} {'eager':>8} {'ORT':>8} {'TVM untuned':>11} {'TVM tuned':>9} {'eager/ORT':>9} {'untuned/ORT':>11} {'tuned/ORT':>9}  tuning")
    for label, model, x in models:
        row = model_rows(label, model, x, profile, args.trials_per_task, args.rounds)
        report["models"].append(row)
        t = row["tuning"]
        print(f"{label:<38} {row['eager_ms']:>8.4f} {row['onnxruntime_ms']:>8.4f} {row['tvm_untuned_ms']:>11.4f} {row['tvm_tuned_ms']:>9.4f} "
              f"{row['eager_vs_ort']:>9.2f} {row['tvm_untuned_vs_ort']:>11.2f} {row['tvm_tuned_vs_ort']:>9.2f}  "
              f"{t['tuned']} tuned ({t['candidates']} candidates, {t['seconds']:.0f} s), {t['from_database']} from the database, {t['untuned']} untuned")

    print(f"\n2. tuning throughput: the same 2 matmul workloads, {args.throughput_trials} trials each")
    for r in throughput(profile, args.throughput_trials):
        report["throughput"].append(r)
        print(f"{r['pair']:<58} {r['records']:>4} candidates ({r['valid']} valid) in {r['seconds']:7.1f} s = {r['per_second']:.2f} per second")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

"""Latency of TVM builds against PyTorch eager and ONNX Runtime, and tuning throughput.

Prints, in one run on the target's CPU at batch 1 (same thread count everywhere):

1. for the uncompressed default digits ViT and a random-init ``deit_tiny_patch16_224``:
   PyTorch eager, ONNX Runtime, OpenVINO, TVM untuned and TVM tuned (MetaSchedule, vitune's
   per-target database) — each timed by the target's protocol (its statistic: median or min of
   the repeats), side by side (``vitune.targets.peers``) — and ratios to ONNX Runtime and to the
   best peer (the faster of ONNX Runtime and OpenVINO), with the tuning time it took;
2. tuning throughput — candidates built and measured per second — of MetaSchedule's default
   ``LocalBuilder``/``LocalRunner`` (process pools) and of vitune's pair, which builds and
   times every candidate in one watched worker process (``vitune.targets.msworker``), on the
   same workloads and trial count.

    python bench/latency.py [--trials-per-task 64] [--fresh] [--no-deit] [--json out.json]

``--fresh`` tunes into an empty database without shipped schedules (so the tuning time is the full cost); without it the
target's persistent database is used and reused.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path


PEERS = ("torch-eager", "onnxruntime", "openvino")  # vitune.targets.peers names
COLUMNS = ("eager", "onnxruntime", "openvino", "tvm_untuned", "tvm_tuned")


def model_rows(label, model, x, profile, trials_per_task: int, rounds: int) -> dict:
    """Tune and build first; then time the peers and both builds in ``rounds`` interleaved rounds
    (eager, ORT, OpenVINO, untuned, tuned, eager, ...), so a burst of load on a shared machine
    falls on all of them alike; each latency is the protocol's statistic over all its rounds'
    samples. The reference is the faster of ONNX Runtime and OpenVINO (fp32)."""
    from vitune.targets.compile import compile_model
    from vitune.targets.peers import get_peer, peer_timer, time_side_by_side
    from vitune.targets.runner import runner_for
    from vitune.targets.tuning import Tuner

    threads = profile.threads
    row = {"model": label, "threads": threads, "statistic": profile.protocol.statistic, "rounds": rounds}
    tuner = Tuner(profile, "tune", trials_per_task)
    try:
        builds = {"tvm_untuned": compile_model(model, x, profile), "tvm_tuned": compile_model(model, x, profile, tuner)}
    finally:
        tuner.close()
    runner = runner_for(profile)
    xs = x.numpy()
    timers = {}
    for column, name in zip(COLUMNS, PEERS):
        timers[column] = peer_timer(get_peer(name).load(model, x, threads), xs, profile.protocol)
    for name, compiled in builds.items():
        timers[name] = lambda c=compiled: runner.time(c, xs, profile.protocol)
    timed = time_side_by_side(timers, profile.protocol, rounds)
    if timed.errors:
        raise RuntimeError(f"{label}: {timed.errors}")
    for name in COLUMNS:
        row[f"{name}_ms"] = timed.latency_ms[name]
    rep = tuner.report
    row["tuning"] = {"seconds": rep.seconds, "workloads": rep.workloads, "from_database": rep.from_database, "tuned": rep.tuned,
                     "untuned": rep.untuned, "candidates": rep.trials, "failed": rep.failed, "stopped": rep.stopped,
                     "crashed": rep.crashed, "trials_per_task": trials_per_task}
    best = min(("onnxruntime", "openvino"), key=lambda k: row[f"{k}_ms"])
    row["best_peer"], row["best_peer_ms"] = best, row[f"{best}_ms"]
    for k in ("eager_ms", "openvino_ms", "tvm_untuned_ms", "tvm_tuned_ms"):
        row[k.replace("_ms", "_vs_ort")] = row[k] / row["onnxruntime_ms"]
    for k in ("tvm_untuned_ms", "tvm_tuned_ms"):
        row[k.replace("_ms", "_vs_best_peer")] = row[k] / row["best_peer_ms"]
    return row


def throughput(profile, trials: int) -> list[dict]:
    """Tune the same two workloads with MetaSchedule's default builder/runner and with ours."""
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms

    from vitune.targets.check import probe_model
    from vitune.targets.compile import export_relax
    from vitune.targets.msworker import CandidateWorker, WorkerBuilder, WorkerRunner
    from vitune.targets.tuning import import_tensor_intrinsics

    import_tensor_intrinsics()
    model, x = probe_model()
    mod, _ = export_relax(model, x)
    target = profile.tvm()
    mod = relax.get_pipeline("zero")(mod)
    tasks = [t for t in ms.relax_integration.extract_tasks(mod, target) if "matmul" in t.task_name][:2]
    out = []
    for label in ("MetaSchedule LocalBuilder + LocalRunner (process pools)", "vitune WorkerBuilder + WorkerRunner (watched worker)"):
        with tempfile.TemporaryDirectory() as work:
            strategy = ms.search_strategy.EvolutionarySearch(population_size=64, init_min_unmeasured=8, genetic_num_iters=3)
            contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(tasks, work, strategy=strategy, num_threads=profile.threads)
            db = ms.database.MemoryDatabase()
            worker = None
            if label.startswith("vitune"):
                worker = CandidateWorker(profile.tuning)
                builder, runner = WorkerBuilder(worker), WorkerRunner(worker)
                callbacks = [ms.measure_callback.AddToDatabase(), ms.measure_callback.UpdateCostModel()]
            else:
                builder, runner = ms.builder.LocalBuilder(max_workers=profile.threads), ms.runner.LocalRunner()
                callbacks = "default"
            logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)  # tune_tasks resets it
            t0 = time.perf_counter()
            ms.tune.tune_tasks(tasks=contexts, task_weights=weights, work_dir=work, max_trials_global=trials * len(tasks),
                               max_trials_per_task=trials, num_trials_per_iter=min(16, trials), builder=builder, runner=runner,
                               database=db, cost_model="xgb", measure_callbacks=callbacks, task_scheduler="gradient")
            seconds = time.perf_counter() - t0  # the worker's start (importing TVM) included
            if worker is not None:
                worker.close()
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
    parser.add_argument("--fresh", action="store_true", help="tune into an empty database, without shipped schedules")
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
        os.environ["VITUNE_SEEDS"] = "0"  # the full cost of tuning: no shipped schedules (vitune.targets.seeds)

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
          f"{profile.protocol.statistic} of the repeats in ms, every peer timed by the target's protocol in {args.rounds} interleaved rounds; "
          "best = the faster of ONNX Runtime and OpenVINO (fp32)")
    print(f"{'model':<38} {'eager':>8} {'ORT':>8} {'OpenVINO':>8} {'TVM untuned':>11} {'TVM tuned':>9} {'tuned/ORT':>9} {'tuned/best':>10}  tuning")
    for label, model, x in models:
        row = model_rows(label, model, x, profile, args.trials_per_task, args.rounds)
        report["models"].append(row)
        t = row["tuning"]
        stopped = f", {t['stopped']} stopped, {t['crashed']} crashed" if t["stopped"] or t["crashed"] else ""
        print(f"{label:<38} {row['eager_ms']:>8.4f} {row['onnxruntime_ms']:>8.4f} {row['openvino_ms']:>8.4f} {row['tvm_untuned_ms']:>11.4f} "
              f"{row['tvm_tuned_ms']:>9.4f} {row['tvm_tuned_vs_ort']:>9.2f} {row['tvm_tuned_vs_best_peer']:>10.2f}  "
              f"{t['tuned']} tuned ({t['candidates']} candidates, {t['failed']} failed{stopped}, {t['seconds']:.0f} s), "
              f"{t['from_database']} from the database, {t['untuned']} untuned")

    print(f"\n2. tuning throughput: the same 2 matmul workloads, {args.throughput_trials} trials each")
    for r in throughput(profile, args.throughput_trials):
        report["throughput"].append(r)
        print(f"{r['pair']:<58} {r['records']:>4} candidates ({r['valid']} valid) in {r['seconds']:7.1f} s = {r['per_second']:.2f} per second")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

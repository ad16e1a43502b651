"""What a user would run instead: the uncompressed model in every peer runtime, against the model
vitune ships.

1. The default model, batch 1, the target's threads everywhere, one process, interleaved rounds:
   ONNX Runtime fp32 and dynamic int8, OpenVINO at its default precision (bf16 on a CPU with
   bf16 instructions, labelled so), held to fp32, and INT8 after NNCF post-training
   quantization, ``torch.compile``, PyTorch eager and vitune's tuned uncompressed build, each
   with its test accuracy (batch 1 over the test split); against them the model vitune ships
   from a study with the default settings (``--study``, run or resumed here), picked as the
   fastest front member within ``--max-drop`` of the uncompressed model's validation accuracy,
   built with kernels tuned into the target's database (what ``vitune tune`` + ``vitune apply``
   ship).
2. ``deit_tiny_patch16_224`` at 224 px, random init, latency only: the same peers' fp32 and int8
   builds of the uncompressed model, against vitune's tuned build of a fixed compressed
   configuration (``w8a8`` on every linear layer but the first block's, rank 0.5 of full).

    python bench/value.py [--study studies/quickstart.toml] [--max-drop 0.01] [--config F] [--rounds 3]
                          [--trials-per-task 64] [--no-deit | --no-default] [--json F]

``--config F`` ships the configuration in ``F`` (a ``vitune study export`` record or a bare
configuration) instead of running the study: the peers against a configuration you already have.

Needs ``pip install -e ".[bench]"`` (NNCF); a peer that cannot be loaded is reported with its
error, the others go on. JSON keys per model: ``peers`` (name → ``latency_ms``,
``test_accuracy``), ``shipped`` (``latency_ms``, ``test_accuracy``, ``config``), ``best_peer``,
``speedup_vs_best_peer``; ``best_fp32_peer`` and ``tvm_uncompressed_vs_best_fp32`` for vitune's
own uncompressed build.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

PEERS = ("onnxruntime", "onnxruntime-int8", "openvino", "openvino-f32", "openvino-nncf-int8", "torch-compile", "torch-eager")
CALIBRATION_IMAGES = 64


def _accuracy(session, dataset) -> float:
    """Top-1 accuracy of a peer session (loaded at batch 1) over ``dataset``, batch 1."""
    from vitune.data.splits import iterate

    correct = total = 0
    for x, y in iterate(dataset, 1):
        correct += int(session(x.numpy()).argmax(-1)[0] == int(y[0]))
        total += 1
    return correct / max(total, 1)


def _tvm_accuracy(compiled, profile, dataset) -> float:
    from vitune.data.splits import iterate
    from vitune.targets.runner import runner_for

    runner = runner_for(profile)
    correct = total = 0
    for x, y in iterate(dataset, 1):
        correct += int(runner.run(compiled, x.numpy()).argmax(-1)[0] == int(y[0]))
        total += 1
    return correct / max(total, 1)


def compare(label, original, shipped, example, profile, trials_per_task, rounds, calibration=None, test=None, config=None) -> dict:
    """Load every peer on ``original``, tune and build ``original`` and ``shipped`` with vitune,
    time everything side by side; accuracies on ``test`` when given."""
    from vitune.errors import short_reason
    from vitune.targets.compile import compile_model
    from vitune.targets.peers import build_label, get_peer, peer_timer, session_label, time_side_by_side
    from vitune.targets.runner import runner_for
    from vitune.targets.tuning import Tuner

    threads = profile.threads
    x = example.numpy()
    row: dict = {"model": label, "threads": threads, "rounds": rounds, "statistic": profile.protocol.statistic, "peers": {}, "errors": {}}
    timers = {}
    for name in PEERS:
        peer = get_peer(name)
        why = peer.missing()
        if why:
            row["errors"][name] = why
            continue
        t0 = time.perf_counter()
        try:
            session = peer.load(original, example, threads, calibration=calibration)
            acc = _accuracy(session, test) if test is not None else None
        except Exception as err:
            row["errors"][name] = short_reason(err)
            continue
        shown, precision = session_label(peer, session)
        row["peers"][name] = {"label": shown, "precision": precision, "test_accuracy": acc, "load_s": time.perf_counter() - t0}
        timers[name] = peer_timer(session, x, profile.protocol)
        print(f"  {label}: {shown} loaded ({time.perf_counter() - t0:.1f} s)" + (f", test accuracy {acc:.4f}" if acc is not None else ""), flush=True)

    tuner = Tuner(profile, "tune", trials_per_task)
    try:
        t0 = time.perf_counter()
        builds = {"vitune-uncompressed": compile_model(original, example, profile, tuner), "shipped": compile_model(shipped, example, profile, tuner)}
        tune_s = time.perf_counter() - t0
    finally:
        tuner.close()
    runner = runner_for(profile)
    for name, built in builds.items():
        runner.prepare(built)
        timers[name] = lambda b=built: runner.time(b, x, profile.protocol)
    print(f"  {label}: vitune builds tuned ({tuner.report.line()})", flush=True)
    timed = time_side_by_side(timers, profile.protocol, rounds)
    row["errors"].update(timed.errors)
    for name, info in row["peers"].items():
        info["latency_ms"] = timed.latency_ms.get(name)
    row["peers"] = {k: v for k, v in row["peers"].items() if v["latency_ms"] is not None}
    row["tuning"] = {"line": tuner.report.line(), "seconds": tune_s, "trials_per_task": trials_per_task}
    row["shipped"] = {"latency_ms": timed.latency_ms.get("shipped"), "kernels": build_label(builds["shipped"]), "config": config,
                      "test_accuracy": _tvm_accuracy(builds["shipped"], profile, test) if test is not None else None}
    row["vitune_uncompressed"] = {"latency_ms": timed.latency_ms.get("vitune-uncompressed"), "kernels": build_label(builds["vitune-uncompressed"]),
                                  "test_accuracy": _tvm_accuracy(builds["vitune-uncompressed"], profile, test) if test is not None else None}
    for built in builds.values():
        built.prepared = None
    if row["peers"]:
        best = min(row["peers"], key=lambda k: row["peers"][k]["latency_ms"])
        row["best_peer"] = best
        row["speedup_vs_best_peer"] = row["peers"][best]["latency_ms"] / row["shipped"]["latency_ms"]
        fp32 = [k for k, v in row["peers"].items() if v["precision"] == "fp32"]
        if fp32:
            best32 = min(fp32, key=lambda k: row["peers"][k]["latency_ms"])
            row["best_fp32_peer"] = best32
            row["tvm_uncompressed_vs_best_fp32"] = row["vitune_uncompressed"]["latency_ms"] / row["peers"][best32]["latency_ms"]
    return row


def read_config(path: Path):
    """A compression configuration from ``path``: a ``vitune study export`` record (single pick)
    or a bare configuration as ``CompressionConfig.to_dict`` writes it."""
    from vitune.compression.config import CompressionConfig
    from vitune.search.export import load_record

    doc = json.loads(path.read_text())
    if isinstance(doc, dict) and "format" in doc:
        return CompressionConfig.from_dict(load_record(path)["config"], where=f"{path} config")
    return CompressionConfig.from_dict(doc, where=str(path))


def study_models(study_path: Path, config_paths: list[str]):
    """``(workspace, target profile, models)`` of a study file: its model uncompressed, then
    compressed with each configuration in ``config_paths`` (:func:`read_config`), by file stem."""
    from vitune.compression.calibrate import Calibration
    from vitune.compression.pipeline import compress
    from vitune.models.zoo import load_workspace
    from vitune.search.studyfile import load_study_file
    from vitune.targets import load_target

    spec = load_study_file(study_path)
    ws = load_workspace(spec.model, spec.data, progress=False)
    models = {"uncompressed": ws.model.eval()}
    for path in config_paths:
        config = read_config(Path(path))
        calib = Calibration.from_dataset(ws.data.calib, config.methods.calib_images)
        models[Path(path).stem] = compress(ws.model, config, train_data=ws.data.train, calibration=calib).eval()
    return ws, load_target(spec.target.name), models


def default_model_row(study_path: Path, max_drop: float, trials_per_task: int, rounds: int, config_path: Path | None = None) -> dict:
    """The study's model against the peers; what ships is the study's fastest front member within
    ``max_drop`` (the study run or resumed first), or the configuration in ``config_path``."""
    import tempfile

    from vitune.compression.calibrate import Calibration
    from vitune.compression.config import CompressionConfig
    from vitune.compression.pipeline import compress
    from vitune.models.zoo import load_workspace
    from vitune.search.export import export
    from vitune.search.study import run_study
    from vitune.search.studyfile import load_study_file
    from vitune.targets import load_target

    spec = load_study_file(study_path)
    ws = load_workspace(spec.model, spec.data, progress=False)
    if config_path is None:
        t0 = time.perf_counter()
        if run_study(spec, progress=False, log=lambda line: print(f"  study: {line}", flush=True)).interrupted:
            raise KeyboardInterrupt  # stopped by Ctrl-C or SIGTERM: no export from a part of the study
        study_s = time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as tmp:
            record = export(spec, "fastest", Path(tmp) / "fastest.json", max_drop=max_drop)
        config = CompressionConfig.from_dict(record["config"], where="export config")
        about = {"summary": record["summary"], "trial": record["study"]["trial"], "val_accuracy": record["metrics"]["accuracy"]}
        study = {"file": str(study_path), "seconds": study_s, "pick": f"fastest within {max_drop:g} of the uncompressed validation accuracy"}
    else:
        config = read_config(config_path)
        about = {"summary": config.summary(), "file": str(config_path)}
        study = {"file": str(study_path), "pick": f"the configuration in {config_path} (no study run)"}
    calib = Calibration.from_dataset(ws.data.calib, config.methods.calib_images)
    shipped = compress(ws.model, config, train_data=ws.data.train, calibration=calib)
    calibration = [ws.data.calib[i][0].unsqueeze(0).numpy() for i in range(min(CALIBRATION_IMAGES, len(ws.data.calib)))]
    profile = load_target(spec.target.name)
    row = compare(f"{spec.model.name} ({study_path.name})", ws.model.eval(), shipped.eval(), ws.example_input(1), profile, trials_per_task,
                  rounds, calibration=calibration, test=ws.data.test, config=about)
    row["study"] = study
    return row


def deit_row(target: str, trials_per_task: int, rounds: int) -> dict:
    import timm
    import torch

    from vitune.compression.config import CompressionConfig, LinearConfig
    from vitune.compression.pipeline import compress
    from vitune.models.layers import discover
    from vitune.targets import load_target

    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False).eval()
    layout = discover(model)
    linear = {}
    for u in layout.linears:
        if u.name.startswith("blocks.0."):
            continue
        linear[u.name] = LinearConfig("w8a8", max(1, round(0.5 * min(u.in_features, u.out_features))))
    config = CompressionConfig.make(linear=linear)
    gen = torch.Generator().manual_seed(1)
    calib = [torch.randn(1, 3, 224, 224, generator=gen) for _ in range(16)]
    from vitune.compression.calibrate import Calibration

    shipped = compress(model, config, calibration=Calibration(torch.cat(calib), torch.zeros(len(calib), dtype=torch.long)))
    example = torch.randn(1, 3, 224, 224, generator=gen)
    return compare("deit_tiny_patch16_224 (random init)", model, shipped.eval(), example, load_target(target), trials_per_task, rounds,
                   calibration=[c.numpy() for c in calib], config={"summary": config.summary(), "recipe": "w8a8 on every linear layer but blocks.0, rank 0.5"})


def _print(row: dict) -> None:
    print(f"\n{row['model']}: batch 1, {row['threads']} threads, {row['statistic']} of the repeats over {row['rounds']} interleaved rounds")
    print(f"{'runtime':<34} {'ms':>9} {'test acc':>9}")
    for name, p in sorted(row["peers"].items(), key=lambda kv: kv[1]["latency_ms"]):
        acc = f"{p['test_accuracy']:.4f}" if p["test_accuracy"] is not None else "-"
        print(f"{p['label'] + ' (uncompressed)':<34} {p['latency_ms']:>9.4f} {acc:>9}")
    for key, what in (("vitune_uncompressed", "vitune TVM (uncompressed)"), ("shipped", "vitune shipped (compressed)")):
        r = row[key]
        acc = f"{r['test_accuracy']:.4f}" if r["test_accuracy"] is not None else "-"
        print(f"{what:<34} {r['latency_ms']:>9.4f} {acc:>9}  {r['kernels']}")
    for name, err in row["errors"].items():
        print(f"{name}: not run ({err})")
    if "best_peer" in row:
        print(f"shipped vs the fastest peer ({row['peers'][row['best_peer']]['label']}): {row['speedup_vs_best_peer']:.2f}x; "
              f"vitune uncompressed / fastest fp32 peer ({row['peers'][row['best_fp32_peer']]['label']}): {row['tvm_uncompressed_vs_best_fp32']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="studies/quickstart.toml")
    parser.add_argument("--max-drop", type=float, default=0.01)
    parser.add_argument("--config", default=None, help="ship this configuration (an export record or a bare configuration "
                        "JSON) instead of running the study and picking from its front")
    parser.add_argument("--trials-per-task", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-deit", action="store_true")
    parser.add_argument("--no-default", action="store_true", help="the deit_tiny part only")
    parser.add_argument("--target", default="local-cpu", help="target of the deit_tiny part (the study names its own)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from vitune.versions import versions

    t0 = time.perf_counter()
    doc = {"versions": versions(), "models": []}
    if not args.no_default:
        doc["models"].append(default_model_row(Path(args.study), args.max_drop, args.trials_per_task, args.rounds,
                                               Path(args.config) if args.config else None))
        _print(doc["models"][-1])
    if not args.no_deit:
        doc["models"].append(deit_row(args.target, args.trials_per_task, args.rounds))
        _print(doc["models"][-1])
    doc["seconds"] = time.perf_counter() - t0
    print(f"\n{doc['seconds']:.0f} s in all")
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=2, default=str) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

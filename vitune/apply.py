"""``vitune apply``: rebuild an exported configuration from the original model and ship it.

Writes into ``out_dir``:

* ``model.pt`` — the compressed ``nn.Module``: ``torch.load("model.pt", weights_only=False)``
  (needs timm and ``vitune.compression`` importable, nothing of the search);
* ``model.pt2`` — the same model as a ``torch.export`` program with a dynamic batch:
  ``torch.export.load("model.pt2").module()`` needs nothing but torch;
* ``tvm-<target>/`` — the TVM-compiled library (``model.so``), its weights (``params.npz``)
  and ``artifact.json`` (how to call it);
* ``metrics.json`` — test-split accuracy (held out from the search), validation accuracy,
  TVM-measured latency, whether the library's kernels are tuned (``kernels``; ``apply`` uses the
  target's tuning database and never tunes: ``vitune tune`` does), the ``baseline`` (the
  uncompressed model in the best runtime the target has — on this machine's CPU the faster of
  ONNX Runtime and OpenVINO — timed side by side with the shipped build) and
  ``speedup_vs_baseline``, size, the agreement of the TVM build with PyTorch (top-1 and largest
  logit difference over the validation split), and the metrics the export recorded.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

from vitune.errors import ConfigError, message_line


def _specs(record: dict):
    from vitune.search.studyfile import DataSpec, ModelSpec

    m, d = record["model"], record["data"]
    # the record's model reference is a ModelSpec plus the weights' hash: take the spec's fields back
    model = ModelSpec(**{f.name: m[f.name] for f in fields(ModelSpec) if f.name in m})
    fractions = tuple(d.get("fractions", {}).items()) or DataSpec.fractions
    data = DataSpec(source=d.get("source", "digits"), root=d.get("root", ""), fractions=fractions, seed=int(d.get("seed", 0)))
    return model, data


def apply_record(record: dict, out_dir: Path, distill_steps: int | None = None, progress: bool = True, where: str = "export") -> dict:
    """``where``: the export file (or a name for the record), for messages."""
    import torch

    from vitune.compression.calibrate import Calibration
    from vitune.compression.config import CompressionConfig
    from vitune.compression.pipeline import compress
    from vitune.compression.stats import model_stats
    from vitune.data.splits import accuracy
    from vitune.models.layers import discover
    from vitune.models.zoo import load_workspace
    from vitune.targets import load_target
    from vitune.targets.compile import compile_model, save_artifact
    from vitune.targets.measure import agreement, time_compiled
    from vitune.targets.peers import build_label, measure_baseline
    from vitune.targets.runner import runner_for
    from vitune.targets.tuning import Tuner
    from vitune.versions import versions

    model_spec, data_spec = _specs(record)
    target = record["target"]
    profile = load_target(target.get("source") or target["name"])
    want = record["model"].get("checkpoint_sha256")
    try:
        ws = load_workspace(model_spec, data_spec, progress=progress)
    except ConfigError as err:  # say it is the model that cannot be rebuilt, not only what failed
        searched = f"weights {want[:12]}" if want else "another model"
        raise ConfigError(f"{where} model: the model it names ({model_spec.source} {model_spec.name!r}) cannot be rebuilt for its data "
                          f"({data_spec.source}): {err}. The search compressed {searched}; export again from the study rather than "
                          "editing the export's model") from None
    if want and want != ws.ref.checkpoint_sha256:
        raise ConfigError(
            f"the original model's weights ({ws.ref.checkpoint_sha256[:12]}) differ from those the export was "
            f"searched on ({want[:12]}); rebuild with the same checkpoint"
        )
    config = CompressionConfig.from_dict(record["config"], where="export config").validate(discover(ws.model))
    if distill_steps is not None:
        config = config.replace(distill_steps=distill_steps)
    calib = Calibration.from_dataset(ws.data.calib, config.methods.calib_images)
    model = compress(ws.model, config, train_data=ws.data.train, calibration=calib)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    example = ws.example_input(1)
    # Tuned schedules where the target's database has them (never tunes here: `vitune tune` does).
    tuner = Tuner(profile, "database")
    try:
        compiled = compile_model(model, example, profile, tuner)
    except Exception as err:
        raise ConfigError(f"the compressed model could not be built for {profile.name}: {message_line(err)}") from None
    artifact = save_artifact(compiled, out_dir / f"tvm-{profile.name}", profile)

    # Latency and the TVM-vs-PyTorch check need the device; without it the artifact is still written.
    problem = runner_for(profile).check()
    m = time_compiled(compiled, example, profile) if problem is None else None
    top1, worst, n = None, None, 0
    base = None
    if problem is None:
        # the speed-up reference: the uncompressed model in the best runtime the target has, timed
        # side by side with the shipped build
        base = measure_baseline(ws.model, example, profile, compiled)
        # The TVM build must compute what PyTorch computes (the search scored PyTorch): compare on
        # the whole validation split, batch 1.
        top1, worst, n = agreement(model, compiled, profile, ws.data.val)

    also = {}  # a multi-target study's other targets: an artifact each, timed where the device is reachable
    for other in record.get("also_targets", []):
        extra = load_target(other.get("source") or other["name"])
        try:
            built = compile_model(model, example, extra, Tuner(extra, "database"))
        except Exception as err:
            raise ConfigError(f"the compressed model could not be built for {extra.name}: {message_line(err)}") from None
        files = save_artifact(built, out_dir / f"tvm-{extra.name}", extra)
        why = runner_for(extra).check()
        timed = time_compiled(built, example, extra) if why is None else None
        also[extra.name] = {"latency_ms": timed.latency_ms if timed else None, "measurement_error": why or (timed.error if timed else None),
                            "artifact": files, "target": extra.describe()}

    torch.save(model, out_dir / "model.pt")
    torch.export.save(_export_program(model, example), str(out_dir / "model.pt2"))

    params, size = model_stats(model)
    metrics = {
        "test_accuracy": accuracy(model, ws.data.test),
        "val_accuracy": accuracy(model, ws.data.val),
        "latency_ms": m.latency_ms if m else None,
        "latency_spread_ms": m.spread_ms if m else None,
        "latency_samples_ms": list(m.samples_ms) if m else [],
        "measurement_error": problem or (m.error if m else None),
        "tuning": None if compiled.tuning is None else compiled.tuning.line(),
        "kernels": build_label(compiled),
        "untuned_workloads": None if compiled.tuning is None else compiled.tuning.untuned,
        "baseline": None if base is None else base.to_dict(),
        "speedup_vs_baseline": None if base is None else base.speedup,
        "params": params,
        "size_bytes": size,
        "model_bytes": size,
        # the weights in the artifact (params.npz), as the build holds them: a tuned CPU build lays
        # them out once at build time, and a weight-only int8 layer's dequantization is part of
        # that (params-only work is lifted), so its weights ship and run as fp32
        "artifact_weights_bytes": int(sum(p.nbytes for p in compiled.params)),
        "memory": None if compiled.memory is None else compiled.memory.to_dict(),
        "peak_memory_bytes": compiled.peak_memory_bytes,
        "tvm_vs_torch": {"max_abs_logit_diff": worst, "top1_agreement": top1, "images": n, "split": "val"},
        "target": profile.describe(),
        "config": config.to_dict(),
        "exported_metrics": record["metrics"],
        "model": ws.ref.to_dict(),
        "artifact": artifact,
        "also_targets": also,
        "versions": versions(),
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def _export_program(model, example):
    import torch

    batch = torch.export.Dim("batch", min=1, max=4096)
    try:  # traced at batch 2: torch.export specialises dimensions of size 1
        return torch.export.export(model, (example.repeat(2, *[1] * (example.dim() - 1)),), dynamic_shapes=({0: batch},))
    except Exception:  # some graphs specialise the batch; a fixed-shape program still loads anywhere
        return torch.export.export(model, (example,))

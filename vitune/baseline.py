"""``vitune compress``: a hardware-blind configuration from a fixed strategy, as an export record.

``build_baseline(spec, strategy, params_budget)`` loads the study file's model and data, lets
:mod:`vitune.compression.allocate` choose the ranks (with the study's ``[compression]``
methods), compresses, and scores validation and test accuracy. Asked to measure, it builds the
result as ``apply`` ships it (kernels from the study target's tuning database, unseen workloads
tuned when ``[target] tuning = "tune"``) and times it side by side with the uncompressed model in
the best runtime the target has (:func:`vitune.targets.peers.measure_baseline`). The record has the same format as ``vitune study export`` writes, so
``vitune apply`` ships it and it can be compared with the search's front.
"""

from __future__ import annotations

import json
from pathlib import Path

from vitune.search.export import FORMAT
from vitune.versions import versions


def build_baseline(spec, strategy: str, params_budget: float, measure_latency: bool = False, progress: bool = True) -> dict:
    from vitune.compression.allocate import allocate
    from vitune.compression.calibrate import Calibration
    from vitune.compression.pipeline import compress
    from vitune.compression.stats import model_stats
    from vitune.data.splits import accuracy
    from vitune.models.layers import discover
    from vitune.models.zoo import load_workspace
    from vitune.targets import load_target

    ws = load_workspace(spec.model, spec.data, progress=progress)
    layout = discover(ws.model)
    calib = Calibration.from_dataset(ws.data.calib, spec.methods.calib_images)
    config = allocate(strategy, ws.model, layout, calib.x, params_budget, spec.methods)
    model = compress(ws.model, config, train_data=ws.data.train, calibration=calib)
    params, size = model_stats(model)
    base_params, base_size = model_stats(ws.model)
    profile = load_target(spec.target.name)
    metrics = {
        "accuracy": accuracy(model, ws.data.val),
        "split": "val",
        "test_accuracy": accuracy(model, ws.data.test),
        "params": params,
        "size_bytes": size,
        "params_ratio": params / base_params,
        "uncompressed": {"accuracy": accuracy(ws.model, ws.data.val), "test_accuracy": accuracy(ws.model, ws.data.test), "params": base_params, "size_bytes": base_size},
        "latency_ms": None,
    }
    if measure_latency:
        metrics.update(measure_against_baseline(spec, ws, model))
    return {
        "format": FORMAT,
        "strategy": {"name": strategy, "params_budget": params_budget, "study_file": str(spec.path)},
        "model": ws.ref.to_dict(),
        "data": {"source": spec.data.source, "root": spec.data.root, "fractions": dict(spec.data.fractions), "seed": spec.data.seed},
        "target": {**profile.describe(), "latency_source": "measured"},
        "config": config.to_dict(),
        "summary": config.summary(),
        "metrics": metrics,
        "versions": versions(),
    }


TVM_UNCOMPRESSED = "vitune uncompressed"  # the name of vitune's uncompressed build among the others timed


def measure_against_baseline(spec, ws, model, tvm_uncompressed: bool = False) -> dict:
    """The shipped build of ``model`` (the study target's tuning) and the uncompressed model in the
    target's best runtime, timed in the same interleaved rounds (and vitune's own uncompressed
    build with them, if asked): ``latency_ms``, ``latency_error``, ``baseline``
    (:class:`~vitune.targets.peers.Baseline` as a dict; vitune's uncompressed build in its
    ``others_ms`` under :data:`TVM_UNCOMPRESSED`), ``speedup``, ``tuning``, ``kernels`` (how each
    build's kernels were scheduled)."""
    from vitune.errors import short_reason
    from vitune.search.study import latency_source_for
    from vitune.targets.compile import compile_model
    from vitune.targets.peers import build_label, measure_baseline

    profile, _, tuner = latency_source_for(spec, spec.target, "[target]")
    example = ws.example_input(1)
    others = {}
    try:
        built = compile_model(model, example, profile, tuner)
        if tvm_uncompressed:
            others[TVM_UNCOMPRESSED] = compile_model(ws.model, example, profile, tuner)
    except Exception as err:  # a measurement is a record: the reason, not an exception
        return {"latency_ms": None, "latency_error": f"compile failed on {profile.name}: {short_reason(err)}", "tuning": spec.target.tuning}
    finally:
        if tuner is not None:
            tuner.close()
    base = measure_baseline(ws.model, example, profile, candidate=built, others=others)
    return {"latency_ms": base.candidate_ms, "latency_error": None if base.candidate_ms else "; ".join(base.errors.values()) or "not timed",
            "baseline": base.to_dict(), "speedup": base.speedup, "tuning": spec.target.tuning,
            "kernels": {"candidate": build_label(built), **{k: build_label(v) for k, v in others.items()}}}


def write_record(record: dict, out: Path) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")

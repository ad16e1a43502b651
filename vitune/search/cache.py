"""Results kept across trials, studies, runs and workers, keyed by everything that decides them.

* **Accuracy** (with parameters and size) of a configuration: keyed by the model's weights, the
  configuration (its per-layer choices and the compression methods), the data split (the
  data set's spec and the split's name), the torch and timm versions and a hash of vitune's
  compression, model and data code.
* **A measurement**: keyed by the model's weights, the configuration, the target (TVM target,
  host, timing protocol), the tuning mode, the torch, timm and TVM versions and a hash of
  vitune's compression, model and targets code (a change to how vitune builds is a miss).

A resumed study, a second study on the same model (another sampler, the benchmark's baselines)
or a worker on the same machine never recomputes either. Predicted latencies are not cached:
they change with every refit and cost milliseconds. The file is
``<cache>/results/<model weights hash>.json``; deleting it only costs recomputation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

from vitune.jsontable import JsonTable
from vitune.search.records import Metrics


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def data_key(data_spec, split: str) -> str:
    from vitune.versions import result_versions

    return _hash({"data": dataclasses.asdict(data_spec), "split": split,
                  "made_by": result_versions("compression", "models", "data", libraries=("torch", "timm"))})


def target_key(profile, tuning: str, seeds: str = "any") -> str:
    """The measured-latency part of a result's key: the target's timing protocol, the tuning
    mode, the code and libraries that build, and the seed files a build may take schedules from
    (the machine's own tuning database is not in it: one configuration keeps the latency it was
    first measured at, within a study and across them)."""
    from vitune.versions import result_versions

    key = {**profile.timing_key(), "runner": profile.runner, "tuning": tuning, "made_by": result_versions("compression", "models", "targets")}
    if seeds != "any":  # another build than the default's (whose keys stay as they were)
        key["seeds"] = seeds
    if tuning != "off":  # the shipped (and the team's) schedules a build may take: a new seed file is new kernels
        from vitune.targets.seeds import find_seeds

        fitting = [seed.sha256[:16] for seed in find_seeds(profile)]
        if fitting:
            key["seed_files"] = fitting
    return _hash(key)


class ResultCache:
    def __init__(self, model_sha256: str, data: str, target: str | None):
        from vitune.paths import cache_dir

        self.table = JsonTable(cache_dir() / "results" / f"{model_sha256[:16]}.json")
        self.data, self.target = data, target

    def lookup(self, config_key: str) -> tuple[Metrics | None, Metrics | None]:
        """The cached figures of a configuration: (accuracy with parameters and size, measured
        latency), each None when unknown; one read of what other processes saved since."""
        self.table.refresh()
        acc = self.table.get(f"acc:{self.data}:{config_key}")
        lat = self.table.get(f"lat:{self.target}:{config_key}") if self.target is not None else None
        try:
            accuracy = Metrics(accuracy=float(acc["accuracy"]), params=int(acc["params"]), size_bytes=int(acc["size_bytes"])) if acc else None
            latency = Metrics(latency_ms=float(lat["latency_ms"]), latency_spread_ms=float(lat["spread_ms"]),
                              latency_samples_ms=tuple(float(v) for v in lat["samples_ms"]), latency_source="measured",
                              peak_memory_bytes=int(lat["peak_memory_bytes"]) if lat.get("peak_memory_bytes") is not None else None) if lat else None
        except (KeyError, TypeError, ValueError):  # an entry this version cannot read is recomputed
            return None, None
        return accuracy, latency

    def put_accuracy(self, config_key: str, metrics: Metrics) -> None:
        self.table.put(f"acc:{self.data}:{config_key}", {"accuracy": metrics.accuracy, "params": metrics.params, "size_bytes": metrics.size_bytes})
        self.table.save()

    def put_latency(self, config_key: str, measurement) -> None:
        if self.target is None:
            return
        self.table.put(f"lat:{self.target}:{config_key}", {
            "latency_ms": measurement.latency_ms, "spread_ms": measurement.spread_ms, "samples_ms": list(measurement.samples_ms),
            "peak_memory_bytes": measurement.peak_memory_bytes,
        })
        self.table.save()

"""Cache keys change with everything that changes a result: library versions and vitune's code."""

import shutil

import pytest

import vitune.versions as versions_module
from vitune.search.cache import data_key, target_key
from vitune.search.studyfile import DataSpec
from vitune.targets.tuning import database_dir


@pytest.fixture()
def keys(fast_target):
    return lambda: (data_key(DataSpec(), "val"), target_key(fast_target, "off"), database_dir(fast_target).name)


@pytest.mark.parametrize("library", ["torch", "timm", "tvm"])
def test_a_library_upgrade_is_a_cache_miss(keys, monkeypatch, library):
    before = keys()
    real = versions_module.versions()
    monkeypatch.setattr(versions_module, "versions", lambda: {**real, library: real[library] + ".post99"})
    after = keys()
    # accuracy depends on torch and timm; measurements on all three; tuning records on TVM only
    assert (after[0] != before[0]) == (library in ("torch", "timm"))
    assert after[1] != before[1]
    assert (after[2] != before[2]) == (library == "tvm")


@pytest.mark.parametrize("subpackage,changes", [("compression", (True, True)), ("targets", (False, True)), ("data", (True, False))])
def test_a_change_to_vitunes_code_is_a_cache_miss(keys, monkeypatch, tmp_path, subpackage, changes):
    before = keys()
    copy = tmp_path / "vitune"
    shutil.copytree(versions_module.PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    victim = sorted((copy / subpackage).glob("*.py"))[-1]
    victim.write_text(victim.read_text() + "\n# a fix\n")
    monkeypatch.setattr(versions_module, "PACKAGE", copy)
    versions_module.code_hash.cache_clear()
    try:
        after = keys()
    finally:
        versions_module.code_hash.cache_clear()
    assert (after[0] != before[0], after[1] != before[1]) == changes
    assert after[2] == before[2]  # tuning records are keyed by workload, not by vitune's code


def test_a_new_seed_file_that_fits_the_target_is_a_cache_miss_for_measured_latency(fast_target, monkeypatch, tmp_path):
    """Schedules shipped with vitune or a team's seed directory build the kernels a measured
    latency comes from: a seed that fits the target, or a new version of it, is a new key;
    untuned builds take no schedule and keep theirs."""
    import gzip
    import json
    import platform

    from vitune.targets import seeds
    from vitune.targets.profile import TIMING_RUNTIME

    monkeypatch.setattr(seeds, "SHIPPED_DIR", tmp_path / "none shipped")
    monkeypatch.setenv("VITUNE_SEEDS_DIR", str(tmp_path))
    meta = {"tvm": versions_module.versions()["tvm"], "runtime": TIMING_RUNTIME, "target": dict(fast_target.tvm_target),
            "threads": fast_target.threads, "machine": platform.machine(), "cpu": "test", "made": "2026-12-05"}

    def seed(note: str) -> None:
        doc = {"vitune_seed": 1, "meta": {**meta, "note": note}, "workloads": [], "records": []}
        (tmp_path / "team.json.gz").write_bytes(gzip.compress(json.dumps(doc).encode()))

    before, untuned = target_key(fast_target, "tune"), target_key(fast_target, "off")
    seed("16 trials")
    assert seeds.find_seeds(fast_target)  # it fits
    first = target_key(fast_target, "tune")
    seed("retuned at 64 trials")
    assert len({before, first, target_key(fast_target, "tune")}) == 3
    assert target_key(fast_target, "off") == untuned
    monkeypatch.setenv("VITUNE_SEEDS", "0")  # seeds turned off: the builds of before
    assert target_key(fast_target, "tune") == before


def test_a_cache_hit_with_predicted_latency_does_not_compress_the_candidate_again(default_workspace, fast_target, tmp_path, monkeypatch):
    """A cached accuracy and a predicted latency: the prediction reads the candidate's structural
    build (shapes and dtypes), so neither refinement nor distillation runs again, and it predicts
    what the fresh evaluation predicted."""
    from vitune.compression.config import CompressionConfig, LinearConfig
    from vitune.compression.methods import CompressionMethods
    from vitune.costmodels import get_latency_source
    from vitune.jsontable import JsonTable
    from vitune.models.layers import discover
    from vitune.search.cache import ResultCache
    from vitune.search.evaluate import Evaluator
    from vitune.search.space import SearchSpace
    from vitune.search.studyfile import SpaceSpec

    ws = default_workspace
    space = SearchSpace.build(SpaceSpec(), discover(ws.model), CompressionMethods())
    source = get_latency_source("analytical", fast_target)
    source.bind(ws, space, "off")
    cache = ResultCache(ws.ref.checkpoint_sha256, data_key(DataSpec(), "val"), target_key(fast_target, "off"))
    cache.table = JsonTable(tmp_path / "results.json")
    evaluator = Evaluator(ws, fast_target, source, cache=cache)
    linear = {f"blocks.{i}.mlp.fc1": LinearConfig(precision="w8a8", rank=8) for i in (1, 2)}
    config = CompressionConfig.make(linear, {}, {}, 2, CompressionMethods(lowrank="aa-residual", refine_steps=5))
    compressions = []
    real = Evaluator.compress
    monkeypatch.setattr(Evaluator, "compress", lambda self, *a, **k: compressions.append(1) or real(self, *a, **k))
    first = evaluator.evaluate(config)
    assert first.ok and not first.metrics.cached and len(compressions) == 1
    again = evaluator.evaluate(config)
    assert again.ok and again.metrics.cached and len(compressions) == 1
    assert again.metrics.latency_ms == first.metrics.latency_ms and again.metrics.accuracy == first.metrics.accuracy
    assert again.metrics.latency_source == first.metrics.latency_source

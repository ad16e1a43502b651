"""The cost-model contract, for every registered kind, on a tiny ViT measured for real."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from vitune.compression.config import CompressionConfig, LinearConfig
from vitune.costmodels.model import cost_model_class, cost_model_kinds, default_path, load_cost_model
from vitune.costmodels.samples import CostContext
from vitune.costmodels.workloads import KernelCache, aggregate, lower, model_kernels, model_workloads
from vitune.errors import ConfigError

KINDS = cost_model_kinds()


def _tiny():
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(img_size=8, patch_size=4, in_chans=1, num_classes=5, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2.0).eval()


def _context(profile, kernels_path):
    from vitune.models.layers import discover
    from vitune.search.space import SearchSpace
    from vitune.search.studyfile import SpaceSpec

    model = _tiny()
    example = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    spec = SpaceSpec(precision=("fp32", "int8", "w8a8"), rank_fraction=(1.0, 0.5), prune_heads=(0.0, 0.5), prune_mlp=(0.0, 0.5))
    space = SearchSpace.build(spec, discover(model))
    return CostContext(profile, model, example, space, "off", KernelCache(kernels_path))


@pytest.fixture(scope="module")
def fitted(fast_target, tmp_path_factory):
    """A context, 6 measured samples, and every kind of cost model fitted on them."""
    context = _context(fast_target, tmp_path_factory.mktemp("kernels") / "kernels.json")
    samples = []
    for config in context.random_configs(6, seed=0):
        sample, error = context.measure(config)
        assert sample is not None, error
        samples.append(sample)
    models = {kind: cost_model_class(kind).for_context(context).fit(samples, context) for kind in KINDS}
    return context, samples, models


def test_features_are_deterministic(fitted):
    context, _, _ = fitted
    config = context.random_configs(1, seed=7)[0]
    a, b = context.build(config), context.build(config)
    assert [w.signature for w in model_workloads(a, context.example)] == [w.signature for w in model_workloads(b, context.example)]
    first = model_workloads(a, context.example)[2]
    assert lower(first) == lower(first)  # lowering the same workload twice gives the same kernels
    fa = aggregate(model_kernels(a, context.example, context.kernels))
    assert fa == aggregate(model_kernels(b, context.example, context.kernels))
    assert fa["total.flops"] > 0 and fa["total.count"] > 0


@pytest.mark.parametrize("kind", KINDS)
def test_predicts_saves_and_loads(fitted, kind, tmp_path):
    context, samples, models = fitted
    model = models[kind]
    held_out = context.build(context.random_configs(1, seed=99, exclude={s.config_key for s in samples})[0])
    p = model.predict(held_out, context)
    assert p.ok, p.error
    assert p.latency_ms > 0 and p.label.startswith(kind)
    path = model.save(tmp_path / f"{kind}.json")
    doc = json.loads(path.read_text())
    assert doc["schema"] == 1 and doc["kind"] == kind and doc["target"] == context.profile.name
    assert doc["feature_spec"]["features"] and "torch" in doc["versions"] and doc["fitted_samples"] == len(samples)
    again = load_cost_model(path)
    assert again.predict(held_out, context).latency_ms == p.latency_ms  # identical, not close


@pytest.mark.parametrize("kind", KINDS)
def test_refuses_another_target_without_override(fitted, kind, fast_target_file, tmp_path):
    from vitune.targets import load_target

    context, _, models = fitted
    other_file = tmp_path / "other.toml"
    other_file.write_text(fast_target_file.read_text().replace('name = "test-cpu"', 'name = "other-cpu"'))
    other = dataclasses.replace(context, profile=load_target(str(other_file)))
    with pytest.raises(ConfigError, match="fitted on target 'test-cpu'"):
        models[kind].predict(context.model, other)
    assert models[kind].predict(context.model, other, allow_other_target=True).ok


def test_unseen_shapes(fitted, monkeypatch, tmp_path):
    """A rank no sample had: learned and analytical predict it from features; the table measures it."""
    from vitune.costmodels.lut import LutModel, parts

    context, _, models = fitted
    config = CompressionConfig.make({"blocks.1.mlp.fc1": LinearConfig("fp32", 3)})
    candidate = context.build(config)
    before = len(context.kernels)
    for kind in ("learned", "analytical"):
        assert models[kind].predict(candidate, context).ok
    assert len(context.kernels) > before  # the new workload was lowered and cached
    # the table, in an empty cache: every part is measured on first sight, then read
    monkeypatch.setenv("VITUNE_CACHE_DIR", str(tmp_path))
    lut = LutModel.for_context(context)
    lut.set_state(models["lut"].state())
    assert lut.predict(candidate, context).ok and lut.table(context).measured == 3  # frame, blocks.0, blocks.1
    assert lut.predict(candidate, context).ok and lut.table(context).measured == 3
    other = context.build(CompressionConfig.make({"blocks.1.mlp.fc1": LinearConfig("fp32", 5)}))
    assert [p.key for p in parts(other, context.example)][:2] == [p.key for p in parts(candidate, context.example)][:2]
    assert lut.predict(other, context).ok and lut.table(context).measured == 4  # only the new blocks.1


def test_unmeasurable_part_is_a_failed_prediction(fitted, tmp_path):
    from vitune.targets import load_target

    context, _, models = fitted
    dead = tmp_path / "dead.toml"
    dead.write_text(
        'name = "dead-cpu"\ndescription = "x"\n[tvm]\ntarget = { kind = "llvm", mcpu = "auto", num-cores = "auto" }\n'
        '[runner]\nkind = "rpc"\nhost = "127.0.0.1"\nport = 9\ntimeout_s = 5\n'
    )
    remote = dataclasses.replace(context, profile=load_target(str(dead)))
    candidate = context.build(CompressionConfig.make({"blocks.0.mlp.fc2": LinearConfig("fp32", 5)}))
    p = models["lut"].predict(candidate, remote, allow_other_target=True)
    assert not p.ok and "frame is not in the block table and measuring it failed" in p.error and "unreachable" in p.error


def test_bad_files_are_one_line_errors(tmp_path, fitted):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not a cost model file"):
        load_cost_model(bad)
    context, _, models = fitted
    path = models["analytical"].save(tmp_path / "a.json")
    doc = json.loads(path.read_text())
    path.write_text(json.dumps({**doc, "schema": 99}))
    with pytest.raises(ConfigError, match="schema 99"):
        load_cost_model(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_cost_model(tmp_path / "missing.json")
    assert default_path(context, "lut").name.startswith("lut-off-")


@pytest.mark.parametrize("target", ["cuda-sm80", "cuda-sm90", "arm-a72", "arm-a78"])
def test_analytical_predicts_for_targets_that_cannot_be_measured_here(fitted, target):
    from vitune.targets import load_target

    context, _, _ = fitted
    remote = dataclasses.replace(context, profile=load_target(target))
    p = cost_model_class("analytical").for_context(remote).predict(context.build(context.random_configs(1, seed=3)[0]), remote)
    assert p.ok and p.latency_ms > 0 and p.label == "analytical (uncalibrated)"


def test_cli_eval_without_a_fitted_model_says_what_to_run(fast_target_file, default_workspace, capsys):
    from vitune.cli import main

    assert main(["costmodel", "eval", str(fast_target_file), "--model", "default", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vitune: error: no lut cost model for target test-cpu") and "vitune costmodel fit" in err
    assert len(err.splitlines()) == 1


def test_cli_fits_and_scores_only_the_kinds_asked(fast_target_file, default_workspace, capsys, tmp_path, monkeypatch):
    """``--kinds`` picks which cost models ``fit`` fits and ``eval`` scores (the block table's first
    fit measures every distinct block of the samples: a user fitting the learned model alone
    should not wait for it); an unknown kind is a one-line error before any work."""
    import vitune.costmodels.samples
    from vitune.cli import main

    # samples and fitted models of its own: other tests expect no fitted model for this target
    monkeypatch.setattr(vitune.costmodels.samples, "target_dir", lambda profile: tmp_path / "costmodels")

    target = str(fast_target_file)
    assert main(["costmodel", "fit", target, "--model", "default", "--samples", "2", "--tuning", "off", "--kinds", "analytical", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "analytical: fitted on 2 samples" in out and "lut:" not in out and "learned:" not in out
    assert main(["costmodel", "eval", target, "--model", "default", "--samples", "2", "--tuning", "off", "--kinds", "analytical", "--quiet"]) == 0
    table = capsys.readouterr().out
    rows = [line for line in table.splitlines() if line.startswith("analytical")]
    assert len(rows) == 2 and "lut" not in table and "learned" not in table  # calibrated, then uncalibrated
    assert main(["costmodel", "fit", target, "--model", "default", "--kinds", "lut,roofline", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vitune: error: --kinds: unknown cost model kind(s) 'roofline'") and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "xs, ys, line",
    [
        ([1.0, 2.0, 3.0, 4.0], [0.5, 1.5, 2.5, 3.5], True),  # parts timed alone pay a call each: negative overhead, kept
        ([1.0, 1.1, 1.2], [0.9, 0.5, 0.1], False),  # noise tilts the line down: proportional
        ([1.0, 1.05, 3.0], [0.01, 0.02, 3.0], False),  # the line reads < 0 at the smallest sample: proportional
        ([2.0], [1.0], False),  # one sample: proportional
    ],
)
def test_fitted_lines_never_predict_zero_or_less(xs, ys, line):
    """The table's and the roofline's calibration (scale · estimate + overhead) is a least-squares
    line only where it is positive over every sample; a candidate smaller than every sample, where
    the line would read zero or less, is predicted by the proportional fit."""
    from vitune.costmodels.model import fit_positive_line, positive

    scale, overhead, ratio = fit_positive_line(xs, ys)
    assert ratio > 0 and scale > 0
    assert (overhead != 0.0) == line
    for x in (min(xs) / 100, min(xs), max(xs), 10 * max(xs)):
        assert positive(scale, overhead, ratio, x) > 0
    if line:
        assert positive(scale, overhead, ratio, 2.5) == pytest.approx(2.0)
        assert positive(scale, overhead, ratio, 0.1) == pytest.approx(0.1 * ratio)  # below the line's zero


def test_samples_measured_with_untuned_kernels_go_stale_when_the_tuning_database_changes(fast_target, tmp_path, monkeypatch):
    """A sample measured in the database's mode with kernels it lacked (built untuned) holds only
    while the database is as it was: once ``vitune tune`` adds to it, that configuration would
    measure otherwise, so the store leaves it out (and ``collect`` measures another). A sample
    whose every kernel had a record, and every untuned build's, stays; an older sample that did
    not record it is treated as unsettled. The block table's entries follow the same rule."""
    import vitune.costmodels.samples
    import vitune.targets.tuning

    monkeypatch.setattr(vitune.costmodels.samples, "target_dir", lambda profile: tmp_path / "costmodels")
    monkeypatch.setattr(vitune.targets.tuning, "database_dir", lambda profile: tmp_path / "database")  # empty: every kernel untuned
    context = dataclasses.replace(_context(fast_target, tmp_path / "kernels.json"), tuning="database")
    sample, error = context.measure(context.random_configs(1, seed=0)[0])
    assert sample is not None, error
    assert sample.unsettled > 0 and sample.database == context.database_version()
    store = context.store()
    for s in (sample, dataclasses.replace(sample, config_key="settled", unsettled=0),
              dataclasses.replace(sample, config_key="older", unsettled=-1, database="")):
        store.append(s)
    assert [s.config_key for s in store.load()] == [sample.config_key, "settled"] and store.stale == 1
    from vitune.costmodels.lut import BlockTable

    blocks = BlockTable(context)  # the block table's entries follow the same rule
    for key, unsettled in (("untuned-block", 3), ("tuned-block", 0)):
        blocks.put(key, {"latency_ms": 1.0, "unsettled": unsettled, "database": context.database_version()})
    assert blocks.holds("untuned-block", context) and blocks.holds("tuned-block", context)
    (tmp_path / "database").mkdir(exist_ok=True)
    with open(tmp_path / "database" / "records.json", "a") as fh:  # a record added, as vitune tune would
        fh.write("\n")
    assert [s.config_key for s in store.load()] == ["settled"] and store.stale == 2
    assert not blocks.holds("untuned-block", context) and blocks.holds("tuned-block", context)  # measured again on sight
    untuned = dataclasses.replace(context, tuning="off")
    assert untuned.current(dataclasses.replace(sample, unsettled=-1, database=""))  # untuned builds read no records

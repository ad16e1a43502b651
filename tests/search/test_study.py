"""A short real study on the real default model: storage, resume, export, apply, failures."""

import dataclasses
import json

import numpy as np
import optuna
import pytest
import torch

from vitune.cli import main
from vitune.costmodels import latency_sources, register_latency_source
from vitune.costmodels.base import MeasuredLatency
from vitune.compression.methods import CompressionMethods
from vitune.errors import ConfigError
from vitune.search.export import load_record
from vitune.search.front import front_timing
from vitune.search.study import open_study, run_study
from vitune.search.studyfile import load_study_file
from vitune.targets.measure import Measurement

STUDY = """
[study]
name = "{name}"
n_trials = {n}
sampler = "{sampler}"
seed = 1
[target]
name = "{target}"
tuning = "off"
latency = "{latency}"
[space]
precision = ["fp32", "int8", "fp16"]
rank_fraction = [1.0, 0.25]
prune_heads = [0.0, 0.25]
prune_mlp = [0.0, 0.5]
"""


class FailsOnFp16(MeasuredLatency):
    """A fake with a known failure: any candidate with an fp16 layer 'crashes its build'."""

    name = "test-fails-on-fp16"
    measures = False  # never served from (or mixed into) the measured results' cache

    def latency(self, model, config, example, compiled_out=None):
        if any(spec.precision == "fp16" for _, spec in config.linear_items):
            return Measurement(target=self.profile.name, error="build failed on test: simulated crash for fp16")
        return super().latency(model, config, example, compiled_out)


if FailsOnFp16.name not in latency_sources():
    register_latency_source(FailsOnFp16)


def write_study(tmp_path, fast_target_file, name="s", n=4, sampler="random", latency="measured"):
    path = tmp_path / f"{name}.toml"
    path.write_text(STUDY.format(name=name, n=n, sampler=sampler, target=fast_target_file, latency=latency))
    return load_study_file(path)


@pytest.fixture(scope="module")
def ran(tmp_path_factory, fast_target_file, default_workspace):
    import vitune.targets.compile as compile_module

    tmp = tmp_path_factory.mktemp("study")
    spec = write_study(tmp, fast_target_file)
    real = compile_module.compile_model

    def counted(*args, **kwargs):
        BUILDS.append(args[0])
        return real(*args, **kwargs)

    import vitune.search.remeasure as remeasure

    closing = remeasure.time_front_with_baseline

    def marked(*args, **kwargs):
        CLOSING.append(len(BUILDS))
        return closing(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(compile_module, "compile_model", counted)
        mp.setattr(remeasure, "time_front_with_baseline", marked)
        summary = run_study(spec, progress=False, log=lambda *_: None)
    return spec, summary, tmp


BUILDS: list = []  # every model the ran study built (trials, the drift reference, the front's closing timing)
CLOSING: list = []  # how many had been built when the closing timing began


def test_storage_holds_accuracy_and_latency_for_each_trial(ran):
    spec, summary, _ = ran
    assert summary.total_complete == 4
    study = open_study(spec, create=False)
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == 4
    for t in complete:
        m = t.user_attrs["metrics"]
        assert 0 <= m["accuracy"] <= 1 and m["latency_ms"] > 0 and m["params"] > 0 and m["size_bytes"] > 0
        assert t.values == [m["accuracy"], m["latency_ms"]]
        assert json.loads(t.user_attrs["config"]) is not None and t.user_attrs["config_key"]
        if "latency_drift" in m:  # timed around the drift reference: how many attempts it took
            assert 1 <= m["latency_attempts"] <= 3
    # the first trial is the uncompressed reference
    assert complete[0].user_attrs["summary"] == "uncompressed"
    assert study.user_attrs["vitune"]["model"]["checkpoint_sha256"]


def test_the_front_is_timed_side_by_side_with_the_baseline_at_the_end_of_a_run(ran):
    from vitune.search.front import front, uncompressed_trial

    spec, _, _ = ran
    study = open_study(spec, create=False)
    timing = front_timing(study)
    side, side_ms, label = timing.shipped_ms, timing.baseline_ms, timing.label
    timed = {t.number for t in front(study)} | {uncompressed_trial(study).number}
    assert set(side) == timed and all(ms > 0 for ms in side.values())  # every member, and the reference
    doc = study.user_attrs["front_timing"]
    assert doc["baseline"]["rounds"] >= 1 and doc["errors"] == {} and side_ms == min(doc["baseline"]["peers_ms"].values())
    assert label == doc["baseline"]["label"] and doc["baseline"]["runtime"] in ("onnxruntime", "openvino")
    # the closing timing reuses the trials' own builds (same schedules, same database) and the
    # drift reference (the uncompressed build): it builds only members served from the results
    # cache (another test may have measured the same configuration), the uncompressed one only
    # where no trial of the run was measured (then there is no drift reference either)
    unbuilt = [t for t in study.trials if t.number in timed and "build_s" not in t.user_attrs.get("timings", {})]
    compressed = [t for t in unbuilt if t.user_attrs.get("summary") != "uncompressed"]
    assert len(CLOSING) == 1 and len(compressed) <= len(BUILDS) - CLOSING[0] <= len(unbuilt)


def test_resume_keeps_completed_trials(ran, tmp_path):
    spec, _, _ = ran
    before = {t.number: t.values for t in open_study(spec, create=False).get_trials(states=(optuna.trial.TrialState.COMPLETE,))}
    again = run_study(spec, progress=False, log=lambda *_: None)  # already at n_trials: nothing to do
    assert again.new_complete == 0
    more = run_study(spec, n_trials=2, progress=False, log=lambda *_: None)
    assert more.new_complete + more.new_failed + more.new_pruned == 2
    after = {t.number: t.values for t in open_study(spec, create=False).get_trials(states=(optuna.trial.TrialState.COMPLETE,))}
    assert all(after[n] == v for n, v in before.items())


def test_duplicate_configuration_is_served_from_the_study(ran):
    spec, _, _ = ran
    study = open_study(spec, create=False)
    first = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))[0]
    study.enqueue_trial(first.params)
    run_study(spec, n_trials=1, progress=False, log=lambda *_: None)
    last = open_study(spec, create=False).get_trials()[-1]
    assert last.user_attrs["cached_from"] == first.number and last.values == first.values


@pytest.mark.parametrize("pick", ["best", "knee", "pareto"])
def test_export_modes(ran, pick, capsys):
    spec, _, tmp = ran
    out = tmp / f"{pick}.json"
    assert main(["study", "export", str(spec.path), "--pick", pick, "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    records = doc["members"] if pick == "pareto" else [doc]
    assert records
    for rec in records:
        assert rec["model"]["name"] == "digits_vit" and len(rec["model"]["checkpoint_sha256"]) == 64
        assert rec["target"]["name"] == "test-cpu"
        assert {"accuracy", "latency_ms", "params", "size_bytes"} <= set(rec["metrics"])
        assert rec["baseline"]["runtime"] in ("onnxruntime", "openvino")
        timing = front_timing(open_study(spec, create=False))
        side, side_ms = timing.shipped_ms, timing.baseline_ms
        if rec["metrics"]["speedup_timed_side_by_side"]:  # a front member: rebuilt and timed beside the baseline
            assert rec["metrics"]["speedup_vs_baseline"] == pytest.approx(side_ms / side[rec["study"]["trial"]])
            assert rec["side_by_side"] == {"baseline_ms": side_ms, "label": timing.label, "shipped_ms": side[rec["study"]["trial"]]}
        else:
            assert rec["metrics"]["speedup_vs_baseline"] == pytest.approx(rec["baseline"]["latency_ms"] / rec["metrics"]["latency_ms"])
        assert {"torch", "timm", "tvm", "vitune"} <= set(rec["versions"])
        assert "linear" in rec["config"]


def test_export_best_respects_latency_budget(ran):
    spec, _, tmp = ran
    study = open_study(spec, create=False)
    lats = sorted(t.values[1] for t in study.best_trials)
    budget = lats[0] * 1.0001
    out = tmp / "budget.json"
    assert main(["study", "export", str(spec.path), "--pick", "best", "--max-latency-ms", str(budget), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["metrics"]["latency_ms"] <= budget
    assert main(["study", "export", str(spec.path), "--max-latency-ms", str(lats[0] / 10), "--out", str(out)]) == 2


def test_export_fastest_within_an_accuracy_drop_and_one_trial_by_number(ran):
    from vitune.search.front import accuracy_of, front, latency_of, uncompressed_trial

    spec, _, tmp = ran
    study = open_study(spec, create=False)
    ref = accuracy_of(uncompressed_trial(study))
    out = tmp / "fastest.json"
    for drop in (0.0, 0.01, 1.0):
        assert main(["study", "export", str(spec.path), "--pick", "fastest", "--max-drop", str(drop), "--out", str(out)]) == 0
        doc = json.loads(out.read_text())
        ok = [t for t in front(study) if accuracy_of(t) >= ref - drop - 1e-12]
        assert doc["metrics"]["latency_ms"] == min(latency_of(t) for t in ok) and doc["pick"] == {"mode": "fastest", "max_latency_ms": None, "max_drop": drop}
    assert main(["study", "export", str(spec.path), "--trial", "0", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["study"]["trial"] == 0
    assert main(["study", "export", str(spec.path), "--trial", "999", "--out", str(out)]) == 2
    assert main(["study", "export", str(spec.path), "--trial", "0", "--pick", "knee", "--out", str(out)]) == 2


def test_export_under_a_memory_limit_picks_from_the_trials_within_it(ran, capsys):
    from vitune.search.front import accuracy_of, complete_trials, front, latency_of
    from vitune.search.records import metrics_of

    spec, _, tmp = ran
    study = open_study(spec, create=False)
    trials = complete_trials(study)
    sizes = sorted({metrics_of(t).size_bytes for t in trials})
    assert len(sizes) > 1 and all(metrics_of(t).peak_memory_bytes for t in trials)
    limit = sizes[len(sizes) // 2]  # some trials over it, some within
    within = [t for t in trials if metrics_of(t).size_bytes <= limit]
    out = tmp / "small.json"
    assert main(["study", "export", str(spec.path), "--max-model-mb", str(limit / 2**20), "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["metrics"]["size_bytes"] <= limit and doc["metrics"]["accuracy"] == max(accuracy_of(t) for t in within)
    assert doc["pick"]["max_model_mb"] == pytest.approx(limit / 2**20)
    peaks = sorted(metrics_of(t).peak_memory_bytes for t in trials)
    assert main(["study", "export", str(spec.path), "--pick", "fastest", "--max-drop", "1", "--max-peak-mb", str(peaks[-1] / 2**20),
                 "--out", str(out)]) == 0  # every trial within: the plain pick
    assert json.loads(out.read_text())["metrics"]["latency_ms"] == min(latency_of(t) for t in front(study))
    capsys.readouterr()
    assert main(["study", "export", str(spec.path), "--max-model-mb", str(sizes[0] / 2**20 / 2), "--out", str(out)]) == 2
    assert f"smallest model is {sizes[0] / 2**20:.3f} MiB" in capsys.readouterr().err
    assert main(["study", "export", str(spec.path), "--trial", "0", "--max-model-mb", "1", "--out", str(out)]) == 2


def test_apply_rebuilds_and_matches_exported_metrics(ran, capsys):
    spec, _, tmp = ran
    exported = tmp / "apply-best.json"
    assert main(["study", "export", str(spec.path), "--pick", "knee", "--out", str(exported)]) == 0
    out = tmp / "applied"
    capsys.readouterr()
    assert main(["apply", str(exported), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    # the speed-up is against the uncompressed model in the faster of ONNX Runtime and OpenVINO,
    # timed side by side with the shipped build
    base = metrics["baseline"]
    assert base["runtime"] in ("onnxruntime", "openvino") and set(base["peers_ms"]) == {"onnxruntime", "openvino"}
    assert base["latency_ms"] == min(base["peers_ms"].values()) and base["candidate_ms"] > 0 and base["errors"] == {}
    assert set(base["peer_labels"]) == set(base["peers_ms"]) and base["peer_labels"][base["runtime"]] == base["label"]
    assert metrics["speedup_vs_baseline"] == pytest.approx(base["latency_ms"] / base["candidate_ms"])
    assert f"baseline: the uncompressed model in {base['label']}" in printed
    # this study ran untuned and the test cache has no tuning records: apply says so
    assert metrics["untuned_workloads"] > 0 and metrics["kernels"] == "vitune's TVM build (untuned)"
    assert "WARNING: the library ships untuned kernels" in printed
    record = load_record(exported)
    assert metrics["val_accuracy"] == pytest.approx(record["metrics"]["accuracy"], abs=1e-9)
    assert metrics["params"] == record["metrics"]["params"] and metrics["size_bytes"] == record["metrics"]["size_bytes"]
    assert 0.33 < metrics["latency_ms"] / record["metrics"]["latency_ms"] < 3.0  # same build, re-timed
    assert metrics["tvm_vs_torch"]["top1_agreement"] == 1.0
    assert 0 < metrics["test_accuracy"] <= 1
    x = torch.randn(3, 1, 8, 8)
    program = torch.export.load(str(out / "model.pt2"))  # loads with plain torch, dynamic batch
    module = torch.load(out / "model.pt", weights_only=False)
    torch.testing.assert_close(program.module()(x), module(x))
    assert module(x).shape == (3, 10)
    assert (out / "tvm-test-cpu" / "model.so").read_bytes()[:4] == b"\x7fELF"
    with np.load(out / "tvm-test-cpu" / "params.npz") as npz:  # the weights as the artifact ships them
        assert metrics["artifact_weights_bytes"] == sum(npz[k].nbytes for k in npz.files) > 0


def test_status_prints_counts_and_front(ran, capsys):
    spec, _, _ = ran
    assert main(["study", "status", str(spec.path)]) == 0
    text = capsys.readouterr().out
    assert "complete" in text and "Pareto front" in text and "uncompressed" in text
    # speed-ups are against the uncompressed model in the faster of ONNX Runtime and OpenVINO,
    # timed side by side with the front, rebuilt as apply ships it, at the end of the run
    study = open_study(spec, create=False)
    base = study.user_attrs["baseline"]["test-cpu"]
    assert base["runtime"] in ("onnxruntime", "openvino") and base["latency_ms"] > 0
    timing = front_timing(study)
    side_ms, label = timing.baseline_ms, timing.label
    assert f"speed-up: shipped_ms (each build as 'vitune apply' ships it) against the uncompressed model in {label}, {side_ms:.4f} ms" in text
    speeds = [float(ln.split()[4].rstrip("x")) for ln in text.splitlines() if ln.strip()[:1].isdigit() and ln.split()[4].endswith("x")]
    assert speeds and all(s > 0 for s in speeds)
    if all(s < 1 for s in speeds):
        assert "every front member is slower than the uncompressed model in" in text


def test_failed_candidate_is_recorded_and_study_goes_on(tmp_path, fast_target_file, default_workspace):
    spec = write_study(tmp_path, fast_target_file, name="flaky", n=6, latency="test-fails-on-fp16")
    spec.path.write_text(spec.path.read_text() + "[search]\nwarm_start = false\n")  # no sweep: failures are the subject
    spec = load_study_file(spec.path)
    summary = run_study(spec, progress=False, log=lambda *_: None)
    study = open_study(spec, create=False)
    failed = study.get_trials(states=(optuna.trial.TrialState.FAIL,))
    assert summary.new_failed == len(failed) >= 1
    assert all("simulated crash for fp16" in t.user_attrs["error"] for t in failed)
    assert summary.new_complete >= 1 and summary.new_complete + summary.new_failed == 6


def test_resuming_against_another_model_is_refused(ran):
    spec, _, _ = ran
    study = open_study(spec, create=False)
    meta = dict(study.user_attrs["vitune"])
    meta["model"] = {**meta["model"], "checkpoint_sha256": "0" * 64}
    study.set_user_attr("vitune", meta)
    try:
        with pytest.raises(ConfigError, match="not on this file's model"):
            run_study(spec, n_trials=1, progress=False, log=lambda *_: None)
    finally:
        study.set_user_attr("vitune", {**meta, "model": {**meta["model"], "checkpoint_sha256": run_model_hash()}})


def test_resuming_with_other_compression_methods_is_refused(ran):
    import dataclasses

    from vitune.compression.methods import CompressionMethods

    spec, _, _ = ran
    changed = dataclasses.replace(spec, methods=CompressionMethods(lowrank="svd"))
    with pytest.raises(ConfigError, match=r"was run with \[compression\] lowrank = 'aa-residual', the study file now says 'svd'"):
        run_study(changed, n_trials=1, progress=False, log=lambda *_: None)


def test_a_study_recorded_before_a_setting_existed_resumes(ran):
    """A study made before ``refine_solver`` existed recorded no such key: it was made with Adam,
    so it resumes with Adam (the file leaves the key to the default, now ALS), and a file that
    names ALS is refused, naming the setting."""
    spec, _, _ = ran
    study = open_study(spec, create=False)
    meta = dict(study.user_attrs["vitune"])
    old = {k: v for k, v in meta["methods"].items() if k != "refine_solver"}
    study.set_user_attr("vitune", {**meta, "methods": old})
    said: list[str] = []
    try:
        assert "refine_solver" not in spec.methods_set and spec.methods.refine_solver == "als"
        run_study(spec, n_trials=0, progress=False, log=said.append)
        assert any("resuming with [compression] refine_solver = 'adam' as it was made" in line for line in said)
        named = dataclasses.replace(spec, methods=dataclasses.replace(spec.methods, refine_solver="als"),
                                    methods_set=spec.methods_set | {"refine_solver"})
        with pytest.raises(ConfigError, match=r"was run with \[compression\] refine_solver = 'adam', the study file now says 'als'"):
            run_study(named, n_trials=0, progress=False, log=lambda *_: None)
    finally:
        study.set_user_attr("vitune", meta)
    assert CompressionMethods.as_recorded(old) == {**spec.methods.to_dict(), "refine_solver": "adam"}


def test_a_study_made_under_an_earlier_default_resumes_with_it(ran):
    """A study recorded ``refine_solver = 'adam'`` (the default until stop 47): a study file that
    leaves the key out resumes it with Adam, every other setting as the file says."""
    from vitune.search.study import resumed_methods

    spec, _, _ = ran
    study = open_study(spec, create=False)
    meta = dict(study.user_attrs["vitune"])
    study.set_user_attr("vitune", {**meta, "methods": {**meta["methods"], "refine_solver": "adam"}})
    try:
        said: list[str] = []
        resumed = resumed_methods(study, spec, said.append)
        assert resumed.methods == dataclasses.replace(spec.methods, refine_solver="adam") and len(said) == 1
        assert resumed_methods(open_study(spec, create=False), resumed, said.append) is resumed  # nothing left to adopt
        run_study(spec, n_trials=0, progress=False, log=lambda *_: None)  # not refused
    finally:
        study.set_user_attr("vitune", meta)
    assert resumed_methods(study, spec, said.append) is spec  # recorded as the file says: unchanged


def test_resuming_with_another_tuning_mode_is_refused(ran):
    import dataclasses

    spec, _, _ = ran
    changed = dataclasses.replace(spec, target=dataclasses.replace(spec.target, tuning="database"))
    with pytest.raises(ConfigError, match=r"tuning = 'off', the study file now says 'database'"):
        run_study(changed, n_trials=1, progress=False, log=lambda *_: None)


@pytest.mark.slow
def test_study_tunes_unseen_workloads_and_says_so(tmp_path, fast_target_file, default_workspace):
    import dataclasses

    spec = write_study(tmp_path, fast_target_file, name="tuned", n=2)
    spec = dataclasses.replace(spec, target=dataclasses.replace(spec.target, tuning="tune", tuning_trials=2))
    lines = []
    summary = run_study(spec, progress=False, log=lines.append)
    assert summary.new_complete == 2
    tuning = [ln for ln in lines if ln.startswith("tuning (tune")]
    assert tuning and "workloads:" in tuning[0] and "from the tuning database" in tuning[0]
    study = open_study(spec, create=False)
    timings = study.trials[0].user_attrs["timings"]
    assert timings["tuned_workloads"] > 0


def run_model_hash():
    from vitune.models.zoo import load_workspace
    from vitune.search.studyfile import DataSpec, ModelSpec

    return load_workspace(ModelSpec(), DataSpec(), progress=False).ref.checkpoint_sha256


def test_cli_reports_bad_input_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[study]\nname = 'x'\nn_trials = 0\n")
    assert main(["study", "run", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "n_trials" in err and "bad.toml" in err
    assert main(["study", "status", str(tmp_path / "missing.toml")]) == 2

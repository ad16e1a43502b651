"""Multi-target studies: one latency objective per target (Pareto), or a budget on several
(constrained); here the local CPU measured through TVM and a Raspberry Pi 4 profile predicted by
the analytical model (no board needed)."""

import json

import optuna
import pytest

from vitune.errors import ConfigError
from vitune.reports import build_report
from vitune.search.export import export, load_record
from vitune.search.front import accuracy_of, dominated, format_front, front, latencies_of
from vitune.search.study import open_study, run_study
from vitune.search.studyfile import load_study_file

STUDY = """
[study]
name = "{name}"
n_trials = {n}
sampler = "random"
seed = 4
[target]
name = "{target}"
tuning = "off"
{budget}
[[target.also]]
name = "arm-a72"
latency = "analytical"
{also_budget}
[search]
mode = "{mode}"
warm_start = false
min_fidelity = 0.0
accuracy_shards = 2
[space]
precision = ["fp32", "int8"]
rank_fraction = [1.0, 0.5, 0.25]
prune_heads = [0.0, 0.25]
prune_mlp = [0.0, 0.5]
"""


def write(tmp_path, target, name, n=6, mode="pareto", budget="", also_budget=""):
    path = tmp_path / f"{name}.toml"
    path.write_text(STUDY.format(name=name, n=n, target=target, mode=mode, budget=budget, also_budget=also_budget))
    return load_study_file(path)


@pytest.fixture(scope="module")
def pareto(tmp_path_factory, fast_target_file, default_workspace):
    tmp = tmp_path_factory.mktemp("multi")
    spec = write(tmp, fast_target_file, "multi")
    run_study(spec, progress=False, log=lambda *_: None)
    return spec, tmp


def test_one_latency_objective_per_target(pareto):
    spec, _ = pareto
    study = open_study(spec, create=False)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE", "MINIMIZE"]
    assert study.metric_names == ["accuracy", "latency_ms", "latency_ms@arm-a72"]
    done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(done) >= 3
    for t in done:
        lat = t.user_attrs["metrics"]["latencies_ms"]
        assert list(lat) == ["test-cpu", "arm-a72"] and all(v > 0 for v in lat.values())
        peaks = t.user_attrs["metrics"]["peaks_bytes"]  # per target; the predicted one builds nothing
        assert list(peaks) == ["test-cpu"] and peaks["test-cpu"] == t.user_attrs["metrics"]["peak_memory_bytes"]
        assert t.values == pytest.approx([t.user_attrs["metrics"]["accuracy"], *lat.values()])
    members = front(study)
    points = [(accuracy_of(t), latencies_of(t)) for t in done]
    assert members and all(not dominated(accuracy_of(m), latencies_of(m), points) for m in members)
    table = format_front(study)
    assert "ms@arm-a72" in table.splitlines()[0]


def test_export_apply_and_report_cover_every_target(pareto, tmp_path):
    spec, _ = pareto
    doc = export(spec, "best", tmp_path / "best.json")
    assert [t["name"] for t in doc["also_targets"]] == ["arm-a72"]
    assert set(doc["metrics"]["latencies_ms"]) == {"test-cpu", "arm-a72"}
    assert load_record(tmp_path / "best.json")["also_targets"][0]["latency_source"] == "analytical"
    report = build_report(spec, tmp_path / "report")
    pareto_png = next(f for f in report.figures if f.name == "pareto.png")
    assert pareto_png.width == 1200  # one panel per target
    assert "ms on arm-a72" in report.html.read_text()


def test_apply_writes_an_artifact_for_every_target(pareto, tmp_path):
    from vitune.apply import apply_record
    from vitune.targets.compile import library_arch

    spec, _ = pareto
    record = export(spec, "best", tmp_path / "best.json")
    metrics = apply_record(record, tmp_path / "out", progress=False)
    other = metrics["also_targets"]["arm-a72"]
    assert library_arch(other["artifact"]["library"]) == "aarch64"
    assert other["latency_ms"] is None and "tracker" in other["measurement_error"]  # no board here: built, not timed
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["also_targets"]["arm-a72"]["artifact"]


def test_constrained_on_another_target_keeps_its_budget(tmp_path, fast_target_file, default_workspace, pareto):
    spec, _ = pareto
    arm = sorted(latencies_of(t)[1] for t in open_study(spec, create=False).get_trials(states=(optuna.trial.TrialState.COMPLETE,)))
    budget = round(arm[len(arm) // 2], 6)  # about half the candidates fit on the board
    cspec = write(tmp_path, fast_target_file, "multi-c", n=6, mode="constrained", also_budget=f"budget_ms = {budget}")
    run_study(cspec, progress=False, log=lambda *_: None)
    study = open_study(cspec, create=False)
    assert [d.name for d in study.directions] == ["MAXIMIZE"]
    done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert all("constraints:latency_ms@arm-a72" in t.system_attrs for t in done)
    assert all("constraints:latency_ms" not in t.system_attrs for t in done)  # no budget on the CPU
    members = front(study)
    assert all(latencies_of(t)[1] <= budget for t in members)
    assert f"{budget} ms on arm-a72" in format_front(study).splitlines()[-1]


def test_memory_and_latency_budgets_per_target(tmp_path, fast_target_file, default_workspace, pareto):
    """Each target keeps its own budgets: peak memory on the CPU (read from its builds), latency on
    the board; a front member meets both, and the front's footer names both."""
    from vitune.targets.memory import MIB

    spec, _ = pareto
    done = open_study(spec, create=False).get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    peaks = sorted(t.user_attrs["metrics"]["peak_memory_bytes"] / MIB for t in done)
    arm = sorted(latencies_of(t)[1] for t in done)
    peak_mb, arm_ms = round(peaks[len(peaks) // 2], 6), round(arm[-1], 6)  # about half fit in memory; the board's budget is loose
    cspec = write(tmp_path, fast_target_file, "multi-m", n=6, mode="constrained", budget=f"budget_peak_mb = {peak_mb}",
                  also_budget=f"budget_ms = {arm_ms}")
    run_study(cspec, progress=False, log=lambda *_: None)
    study = open_study(cspec, create=False)
    finished = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert all({"constraints:peak_mb", "constraints:latency_ms@arm-a72"} <= set(t.system_attrs) for t in finished)
    assert all("constraints:latency_ms" not in t.system_attrs for t in finished)  # no latency budget on the CPU
    members = front(study)
    assert members and all(t.user_attrs["metrics"]["peak_memory_bytes"] / MIB <= peak_mb and latencies_of(t)[1] <= arm_ms for t in members)
    footer = format_front(study).splitlines()[-1]
    assert "on arm-a72" in footer and "peak" in footer


def test_changing_the_targets_of_a_study_is_refused(pareto, tmp_path, fast_target_file):
    spec, tmp = pareto
    other = tmp / "multi.toml"
    text = other.read_text()
    moved = tmp / "moved.toml"
    moved.write_text(text.replace('name = "arm-a72"', 'name = "arm-a78"'))
    with pytest.raises(ConfigError, match="extra targets .*arm-a72.*arm-a78"):
        run_study(load_study_file(moved), progress=False, log=lambda *_: None)
    fewer = tmp / "fewer.toml"
    fewer.write_text(text.split("[[target.also]]")[0] + "[search]" + text.split("[search]")[1])
    with pytest.raises(ConfigError, match=r"has the objectives \['accuracy', 'latency_ms', 'latency_ms@arm-a72'\], the study file "
                                          r"asks for \['accuracy', 'latency_ms'\]"):
        run_study(load_study_file(fewer), progress=False, log=lambda *_: None)


@pytest.mark.parametrize("extra,message", [
    ('[[target.also]]\nlatency = "analytical"', r"\[\[target.also\]\] #2 name: required"),
    ('[[target.also]]\nname = "arm-a72"', r"#2 name: target 'arm-a72' is listed twice"),
    ('[[target.also]]\nname = "arm-a78"\nremeasure_every = 3', r"#2: unknown key 'remeasure_every'"),
])
def test_bad_extra_targets_are_named(tmp_path, fast_target_file, extra, message):
    path = tmp_path / "bad.toml"
    path.write_text(STUDY.format(name="bad", n=2, target=fast_target_file, mode="pareto", budget="", also_budget="").replace("[search]", extra + "\n[search]"))
    with pytest.raises(ConfigError, match=message):
        load_study_file(path)

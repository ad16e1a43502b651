"""Studies scored by predicted latency: fail fast without a fitted model; re-measure the front and refit."""

import json

import pytest

from tests.search.test_study import write_study
from vitune.errors import ConfigError
from vitune.search.study import format_front, open_study, run_study


def test_a_missing_cost_model_fails_before_any_trial(tmp_path, fast_target_file, default_workspace):
    spec = write_study(tmp_path, fast_target_file, name="nomodel", latency="learned")
    with pytest.raises(ConfigError, match="no fitted learned cost model .* 'vitune costmodel fit"):
        run_study(spec, progress=False, log=lambda *_: None)
    assert not open_study(spec, create=False).trials


def test_predicted_study_remeasures_its_front_and_refits(tmp_path, fast_target_file, default_workspace):
    from vitune.costmodels.model import default_path, load_cost_model

    spec = write_study(tmp_path, fast_target_file, name="predicted", n=4, latency="analytical")
    lines = []
    run_study(spec, progress=False, log=lines.append)
    study = open_study(spec, create=False)
    sources = {t.user_attrs["metrics"]["latency_source"] for t in study.trials if t.state.name == "COMPLETE"}
    assert sources == {"predicted:analytical (uncalibrated)"}
    checks = study.user_attrs["latency_checks"]
    assert checks and all(c["measured_ms"] > 0 and c["predicted_ms"] > 0 for c in checks.values())
    assert any("re-measured" in line for line in lines)
    table = format_front(study)
    assert "measured_ms" in table and "predicted:analytical" in table
    # the report plots predicted against measured latency for the re-measured front
    from vitune.reports import build_report
    from vitune.reports.figures import png_size

    report = build_report(spec, tmp_path / "report")
    check = next(f for f in report.figures if f.name == "latency_checks.png")
    assert png_size(report.folder / check.name) == (check.width, check.height) == (600, 600)
    page = report.html.read_text()
    assert "Predicted vs measured latency" in page and all(f"<td class=\"num\">{n}</td>" in page for n in checks)
    # the measurements calibrated the analytical model, saved where the next study finds it
    from vitune.costmodels import get_latency_source
    from vitune.models.layers import discover
    from vitune.search.space import SearchSpace
    from vitune.targets import load_target

    source = get_latency_source("analytical", load_target(str(fast_target_file)))
    source.bind(default_workspace, SearchSpace.build(spec.space, discover(default_workspace.model), spec.methods), "off")
    saved = json.loads(default_path(source.context, "analytical").read_text())
    assert saved["state"]["calibrated_on"] == len(checks)
    assert load_cost_model(default_path(source.context, "analytical")).label().startswith("analytical (calibrated")
    # a run that ended before its front was re-measured (stopped, crashed): the next run, with no
    # trial left to run, re-measures it
    study.set_user_attr("latency_checks", {})
    lines = []
    run_study(spec, progress=False, log=lines.append)
    assert set(open_study(spec, create=False).user_attrs["latency_checks"]) == set(checks)
    assert any("left unchecked" in line for line in lines)


def test_an_unmeasurable_target_fails_fast_and_points_to_the_analytical_model(tmp_path, default_workspace):
    from vitune.search.studyfile import load_study_file

    path = tmp_path / "board.toml"
    path.write_text('[study]\nname = "board"\n[target]\nname = "arm-a72"\ntuning = "off"\n')
    with pytest.raises(ConfigError, match='cannot be measured from here .*unreachable.* latency = "analytical"'):
        run_study(load_study_file(path), progress=False, log=lambda *_: None)

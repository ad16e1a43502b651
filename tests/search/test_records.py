"""The typed trial record: one reader of what trials measured, shared by the front, reports and export."""

from __future__ import annotations

import ast
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from vitune.search.records import METRICS_ATTR, PARTIAL_ATTR, Metrics, accuracy_of, has_metrics, latencies_of, latency_of, metrics_of

PACKAGE = Path(__file__).resolve().parents[2] / "vitune"


def _trial(attrs: dict, values=None):
    return SimpleNamespace(user_attrs=attrs, values=values)


def test_round_trip_of_the_stored_form():
    m = Metrics(accuracy=0.95, latency_ms=0.2, latencies_ms=(("local-cpu", 0.2), ("arm-a72", 1.5)), latency_spread_ms=0.01,
                latency_samples_ms=(0.2, 0.21), params=1000, size_bytes=4000, fidelity=0.99, latency_source="lut")
    stored = m.to_dict()
    assert stored["latencies_ms"] == {"local-cpu": 0.2, "arm-a72": 1.5} and stored["latency_samples_ms"] == [0.2, 0.21]
    assert "partial_accuracy" not in stored and "cached" not in stored  # only the figures taken
    assert Metrics.from_dict(stored) == m
    assert m.latencies == (0.2, 1.5) and m.targets == ("local-cpu", "arm-a72") and m.latency_on("arm-a72") == 1.5


def test_reader_takes_what_older_and_newer_versions_wrote():
    old = {"accuracy": 1, "latency_ms": 3, "params": 10.0, "size_bytes": 40, "some_future_key": [1, 2]}
    m = Metrics.from_dict(old)
    assert m.accuracy == 1.0 and isinstance(m.accuracy, float) and m.params == 10 and isinstance(m.params, int)
    assert m.latencies == (3.0,) and m.latency_source == "measured"
    with pytest.raises(ValueError, match="expected a mapping"):
        Metrics.from_dict([1, 2])


def test_merged_takes_the_other_records_figures():
    lat = Metrics(latency_ms=0.5, latency_spread_ms=0.01)
    acc = Metrics(accuracy=0.9, params=5, size_bytes=20)
    both = lat.merged(acc)
    assert (both.accuracy, both.latency_ms, both.params, both.latency_spread_ms) == (0.9, 0.5, 5, 0.01)


def test_trial_readers():
    complete = _trial({METRICS_ATTR: Metrics(accuracy=0.9, latency_ms=0.3).to_dict()}, values=[0.9, 0.3])
    assert has_metrics(complete) and accuracy_of(complete) == 0.9 and latency_of(complete) == 0.3 and latencies_of(complete) == (0.3,)
    stopped = _trial({PARTIAL_ATTR: Metrics(latency_ms=0.4, partial_accuracy=0.5, accuracy_seen=10).to_dict()})
    assert not has_metrics(stopped) and metrics_of(stopped).accuracy_seen == 10 and math.isnan(accuracy_of(stopped))
    legacy = _trial({METRICS_ATTR: {}}, values=[0.8, 0.7])  # a study from before vitune recorded figures
    assert accuracy_of(legacy) == 0.8 and latency_of(legacy) == 0.7


def test_no_module_reads_trial_figures_by_key():
    """Trial figures are read through vitune.search.records only: no other module looks up the
    ``metrics``/``partial_metrics`` user attributes or indexes a CandidateResult's figures by key."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "records.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("get", "set_user_attr"):
                chain = ast.unparse(node.func.value)
                if "user_attrs" in chain or node.func.attr == "set_user_attr":
                    if node.args and isinstance(node.args[0], ast.Constant) and node.args[0].value in (METRICS_ATTR, PARTIAL_ATTR):
                        offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
            if isinstance(node, ast.Subscript) and ast.unparse(node.value).endswith("user_attrs"):
                if isinstance(node.slice, ast.Constant) and node.slice.value in (METRICS_ATTR, PARTIAL_ATTR):
                    offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert not offenders, offenders


def test_the_time_split_adds_up_to_the_wall_time():
    import re

    from vitune.search.records import time_split

    rows = [{"suggest_s": 0.1, "wait_s": 0.0, "front_s": 0.2, "compress_s": 1.0, "latency_s": 2.0, "build_s": 1.5, "accuracy_s": 0.5, "trial_s": 4.0},
            {"suggest_s": 0.1, "compress_s": 2.0, "latency_s": 2.0, "latency_s@arm-a72": 1.0, "accuracy_s": 0.7, "trial_s": 6.0}]
    line = time_split(rows, wall_s=12.0)
    parts = dict((label.strip(), float(v)) for label, v in re.findall(r"([a-z ]+) (-?\d+\.\d\d)(?=,| =)", line.split(": ", 1)[1]))
    assert parts["latency"] == 2.5  # the other target's latency counts with the primary's; build_s is inside it
    assert sum(parts.values()) == pytest.approx(5.0, abs=0.02)
    assert "= 5.00 in the trial" in line and "+ 1.00 between trials" in line and "= 6.00 of wall time" in line
    assert time_split([]) == "no trial timed"
    rows[1]["accuracy_beside_s"] = 1.2  # read beside the build: shown, not added
    line = time_split(rows, wall_s=12.0)
    assert "= 5.00 in the trial" in line and line.endswith("accuracy read beside the build 0.60 (not added: it ran during latency)")


def test_the_uncompressed_trial_is_found_whatever_the_studys_methods():
    """A study's ``[compression]`` methods are part of each configuration's key; the uncompressed
    trial (the front's reference, ``--max-drop``'s accuracy) is found all the same."""
    import dataclasses

    import optuna

    from vitune.compression.config import CompressionConfig, LinearConfig
    from vitune.compression.methods import CompressionMethods
    from vitune.search.front import uncompressed_trial

    methods = CompressionMethods(calib_images=64, refine_steps=50)
    ident = dataclasses.replace(CompressionConfig.identity(), methods=methods)
    other = CompressionConfig.from_dict({"linear": {"blocks.1.mlp.fc1": LinearConfig("fp32", 8).to_dict()}, "methods": methods.to_dict()})
    assert ident.key != CompressionConfig.identity().key
    study = optuna.create_study(directions=["maximize", "minimize"])
    for number, config in enumerate((other, ident)):
        trial = study.ask()
        trial.set_user_attr("config", config.to_json())
        trial.set_user_attr("config_key", config.key)
        trial.set_user_attr(METRICS_ATTR, Metrics(accuracy=0.9, latency_ms=1.0 + number).to_dict())
        study.tell(trial, [0.9, 1.0 + number])
    found = uncompressed_trial(study)
    assert found is not None and found.number == 1

"""The search bench (bench/search.py): its statistics, its baselines' configurations, and (slow)
the bench itself at ``--seeds 2 --trials 30`` on the quickstart."""

import json
import math
import subprocess
import sys

import pytest

from tests.bench import ROOT, load_bench
from tests.search.test_warmstart import synthetic_sweep
from vitune.models.default import build_digits_vit
from vitune.models.layers import discover
from vitune.search.space import SearchSpace
from vitune.search.studyfile import SpaceSpec


@pytest.fixture(scope="module")
def search():
    return load_bench("search")


@pytest.fixture(scope="module")
def space():
    return SearchSpace.build(SpaceSpec(precision=("fp32", "int8"), rank_fraction=(1.0, 0.5, 0.25), prune_heads=(0.0,), prune_mlp=(0.0,), distill_steps=(0,)), discover(build_digits_vit()))


def test_figures_over_seeds(search):
    # box: accuracy > 0.8, latency < 1.0; two seeds of one method, one of another
    runs = {
        "a": [[(0.9, 0.5), None, (0.95, 0.2)],  # HV (1-0.2)*(0.95-0.8): (0.9, 0.5) is dominated
              [(0.85, 0.3), (0.9, 0.25), (0.7, 0.1)]],  # (1-0.25)*(0.9-0.8); 0.7 is under the floor
        "b": [[(0.99, 1.5), (0.81, 0.1)]],  # the first is slower than the reference: outside the box
    }
    doc = search.summarise(runs, ref_acc=0.8, ref_ms=1.0)
    a, b = doc["methods"]["a"], doc["methods"]["b"]
    assert a["hypervolume"]["values"] == pytest.approx([0.12, 0.075])
    assert a["hypervolume"]["median"] == pytest.approx((0.12 + 0.075) / 2)
    assert a["hypervolume"]["iqr"] == pytest.approx(a["hypervolume"]["q75"] - a["hypervolume"]["q25"]) and a["hypervolume"]["iqr"] > 0
    assert b["hypervolume"]["values"] == pytest.approx([0.009]) and b["hypervolume"]["iqr"] == 0
    assert doc["best_hypervolume"] == pytest.approx(0.12)
    # at 2x (0.5 ms): a's seeds reach 0.95 and 0.9; at 5x (0.2 ms): 0.95 and 0.7
    assert a["acc_at"]["2x"] == pytest.approx(0.925) and a["acc_at"]["5x"] == pytest.approx(0.825)
    assert b["acc_at"]["3x"] == pytest.approx(0.81)
    # 95 % of 0.12: seed 0 reaches it at its third evaluation, seed 1 never: the median is "never"
    assert a["trials_to_95_values"] == [3, None] and a["trials_to_95"] is None
    assert b["trials_to_95"] is None and a["evaluated"] == [3, 3] and a["stopped_or_failed"] == [1, 0]


def test_the_reference_is_the_fastest_runtime_unless_a_peer_is_named(search):
    from vitune.targets.peers import Baseline

    base = Baseline("openvino", "OpenVINO bf16", 1.0, None, {"openvino": 1.0, "onnxruntime": 2.5}, {}, 3, {"uncompressed": 4.0},
                    {"openvino": "OpenVINO bf16", "onnxruntime": "ONNX Runtime fp32"})
    assert search.reference_of(base, "best") == ("openvino", "OpenVINO bf16", 1.0)
    assert search.reference_of(base, "onnxruntime") == ("onnxruntime", "ONNX Runtime fp32", 2.5)
    runtime, label, ms = search.reference_of(base, "tvm", "uncompressed")
    assert (runtime, ms) == ("tvm", 4.0) and "not a speed-up reference" in label
    fig = search.reference_figures(base, "onnxruntime", "uncompressed", 2.0)  # the JSON's entries, in the candidates' units
    assert fig == {"runtime": "onnxruntime", "label": "ONNX Runtime fp32", "latency_ms": 5.0, "timed_ms": 2.5, "tvm_uncompressed_ms": 4.0,
                   "ratio_to_tvm": 2.5 / 4.0, "fastest": {"runtime": "openvino", "label": "OpenVINO bf16", "latency_ms": 2.0, "timed_ms": 1.0}}
    with pytest.raises(SystemExit, match="--reference tensorrt: not timed on this target"):
        search.reference_of(base, "tensorrt")
    ref = {"runtime": "onnxruntime", "latency_ms": 2.5, "fastest": {"runtime": "openvino", "label": "OpenVINO bf16", "latency_ms": 1.0}}
    assert "the fastest runtime here is OpenVINO bf16, 1.0000 ms (2.50x faster): no speed-up is claimed" in search.fastest_note(ref)
    assert search.fastest_note({**ref, "runtime": "openvino"}) == "" and search.fastest_note({"runtime": "x"}) == ""


def test_median_counts_a_missing_value_as_the_worst(search):
    assert search.median_or_none([1, None, 3]) == 1
    assert search.median_or_none([None, None, 3]) is None
    assert search.median_or_none([2, None, 4], missing=math.inf) == 4
    assert search.trials_to([0.0, 0.5, 1.0], 0.5) == 2 and search.trials_to([0.0], 1.0) is None


def test_the_fronts_near_members_are_timed_again_and_their_new_latencies_rank_them(search):
    # a: the front is (0.95, 0.2); (0.95, 0.28) is 40 % slower at the same accuracy: near it at a
    # 50 % margin, not at 20 %; (0.9, 0.5) is beaten by 150 %: never
    a = [(0.95, 0.2), (0.95, 0.28), None, (0.9, 0.5)]
    assert search.near_front(a, 0.5) == [0, 1] and search.near_front(a, 0.2) == [0] and search.near_front(a, 0.0) == [0]
    assert search.near_front([None, (0.9, 0.3), (0.8, 0.1)], 0.0) == [1, 2]  # a faster, less accurate point is on the front too
    runs = {"m": [a], "n": [[(0.95, 0.3), (0.95, 0.2)]]}
    keys = {"m": [["k1", "k2", None, "k3"]], "n": [["k2", "k1"]]}
    assert search.front_keys(runs, keys, 0.5) == ["k1", "k2"]  # each configuration once, in the order first seen
    # timed side by side, k1 turns out the slower: its lucky timing no longer puts it on the front
    again = search.retimed(runs, keys, {"k1": 0.3, "k2": 0.25})
    assert again == {"m": [[(0.95, 0.3), (0.95, 0.25), None, (0.9, 0.5)]], "n": [[(0.95, 0.25), (0.95, 0.3)]]}
    doc = search.summarise(again, ref_acc=0.8, ref_ms=1.0)
    assert doc["methods"]["m"]["hypervolume"]["values"] == pytest.approx([(1 - 0.25) * (0.95 - 0.8)])


def test_uniform_draw_is_seeded_and_never_the_uncompressed_model(search, space):
    draw = search.uniform_configs(space, 4, seed=1)
    assert len(draw) == 4 and not any(c.is_identity for c in draw) and len({c.key for c in draw}) == 4
    assert [c.key for c in search.uniform_configs(space, 4, seed=1)] == [c.key for c in draw]
    everything = search.uniform_configs(space, 100, seed=0)
    assert len(everything) == 2 * 3 - 1  # the whole grid when the budget covers it
    assert {c.key for c in search.uniform_configs(space, 100, seed=5)} == {c.key for c in everything}


def test_sensitivity_baseline_compresses_the_least_sensitive_layers_first(search, space):
    sweep = synthetic_sweep(space)
    configs = search.sensitivity_params(space, sweep, 8)
    assert 1 < len(configs) <= 8 and all(c != space.identity_params() for c in configs)
    changed = [{n for n, v in p.items() if v != space.identity_params().get(n)} for p in configs]
    assert all(a <= b for a, b in zip(changed, changed[1:]))  # tighter budgets only add layers (or deepen them)
    first_param = min((o for o in sweep["options"]), key=lambda o: (0.98 - o["accuracy"]))["param"]
    assert first_param in changed[0]  # the least sensitive option is taken first
    last = configs[-1]  # the tightest budget: every layer at its largest saving
    assert all(v == "int8" for n, v in last.items() if n.endswith("precision"))
    assert all(v == 0.25 for n, v in last.items() if n.endswith("rank_fraction"))


def test_a_study_stopped_by_a_signal_stops_the_bench(search, tmp_path, monkeypatch):
    # the study finishes its trial and returns on Ctrl-C or SIGTERM; the bench must not go on to
    # its next method as if the study were complete
    import dataclasses

    from vitune.search import study as study_module
    from vitune.search.studyfile import load_study_file

    stopped = study_module.RunSummary(0, 0, 0.0, 3, interrupted=True)
    monkeypatch.setattr(study_module, "run_study", lambda *a, **k: stopped)
    monkeypatch.setattr(search, "study_points", lambda *a, **k: pytest.fail("points read from a stopped study"))
    base = load_study_file(ROOT / "studies" / "quickstart.toml")
    with pytest.raises(KeyboardInterrupt):
        search.run_search(base, "vitune", 0, 5, base.sampler, True, tmp_path)
    monkeypatch.setattr(study_module, "run_study", lambda *a, **k: dataclasses.replace(stopped, interrupted=False))
    monkeypatch.setattr(search, "study_points", lambda *a, **k: [((0.9, 0.1), None)] * 7)
    assert search.run_search(base, "vitune", 0, 5, base.sampler, True, tmp_path) == [((0.9, 0.1), None)] * 5


@pytest.mark.slow
def test_the_bench_at_two_seeds_and_30_trials(tmp_path):
    search_module = load_bench("search")
    out = tmp_path / "search.json"
    subprocess.run([sys.executable, str(ROOT / "bench" / "search.py"), "--seeds", "2", "--trials", "30", "--restart",
                    "--out-dir", str(tmp_path / "studies"), "--json", str(out), "--plot", str(tmp_path / "fronts.png")],
                   check=True, cwd=ROOT, timeout=3 * 3600)
    doc = json.loads(out.read_text())
    assert doc["complete"] and doc["val_images"] >= 500 and doc["reference"]["runtime"] != "tvm"
    assert set(doc["methods"]) == set(load_bench("search").METHODS)
    for name, row in doc["methods"].items():
        assert len(row["hypervolume"]["values"]) == 2 and row["hypervolume"]["median"] >= 0
        assert all(0 < n <= 30 for n in row["evaluated"]), name
        assert set(row["acc_at"]) == {"2x", "2.5x", "3x", "5x"}
    assert all(n == 30 for n in doc["methods"]["random"]["evaluated"])
    assert doc["methods"]["vitune"]["hypervolume"]["median"] > 0
    # the fronts timed again side by side at the end: every key a figure's point carries was timed
    timing = doc["front_timing"]
    assert timing["rounds"] == 7 and not timing["errors"] and doc["reference"]["latency_ms"] == timing["latency_ms"]
    for method, runs in doc["points"].items():
        for points, keys, recorded in zip(runs, doc["keys"][method], doc["points_recorded"][method]):
            for i in search_module.near_front(recorded, timing["margin"]):
                assert points[i][1] == pytest.approx(timing["retimed_ms"][keys[i]]), method
    assert (tmp_path / "fronts.png").stat().st_size > 0


def test_a_run_resumes_only_on_the_same_machine_and_inputs_and_keeps_its_time(search, tmp_path):
    host, inputs = {"mcpu": "emeraldrapids", "cores": 2}, {"study": "q.toml", "trials": 100, "val_copies": 2}
    ledger = search.Ledger.open(tmp_path, host, inputs)
    ledger.start("vitune", 0)
    ledger.stop()
    ledger.start("vitune", 1)
    ledger.spent["random-s0"] = 5.0  # as if an earlier invocation had spent it
    ledger.stop()
    again = search.Ledger.open(tmp_path, host, inputs)  # resumed: the time of both invocations adds up
    assert set(again.spent) == {"vitune-s0", "vitune-s1", "random-s0"}
    again.start("random", 0)
    seconds = again.seconds()
    assert seconds["random"] >= 5.0 and set(seconds) == {"vitune", "random"}
    again.stop()
    assert json.loads((tmp_path / search.LEDGER).read_text())["seconds"]["random-s0"] >= 5.0
    with pytest.raises(SystemExit, match="another machine"):
        search.Ledger.open(tmp_path, {**host, "mcpu": "znver5"}, inputs)
    with pytest.raises(SystemExit, match="run with"):
        search.Ledger.open(tmp_path, host, {**inputs, "trials": 30})
    (tmp_path / search.LEDGER).write_text("[1, 2]")
    with pytest.raises(SystemExit, match="not a bench ledger"):
        search.Ledger.open(tmp_path, host, inputs)

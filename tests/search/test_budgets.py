"""Budgets of a constrained study: constraint values per target, fit, and how far over."""

import pytest

from vitune.search.budgets import UNKNOWN, Budget, budgets_text, excess, fits, relative_excess
from vitune.targets.memory import MIB
from vitune.search.records import Metrics


def test_each_budget_is_one_constraint_named_by_figure_and_target():
    m = Metrics(latency_ms=2.0, latencies_ms=(("cpu", 2.0), ("board", 30.0)), size_bytes=3 * MIB, peak_memory_bytes=10 * MIB,
                peaks_bytes=(("cpu", 10 * MIB), ("board", 12 * MIB)))
    budgets = (Budget(latency_ms=1.5, model_mb=4.0), Budget(latency_ms=40.0, peak_mb=8.0))
    got = excess(budgets, m, ("cpu", "board"))
    assert got == {"latency_ms": pytest.approx(0.5), "model_mb": pytest.approx(-1.0), "latency_ms@board": pytest.approx(-10.0),
                   "peak_mb@board": pytest.approx(4.0)}
    assert not fits(budgets, m, ("cpu", "board"))
    assert relative_excess(budgets, m, ("cpu", "board")) == pytest.approx(0.5 / 1.5 + 4.0 / 8.0)
    assert fits((Budget(latency_ms=2.0, model_mb=3.0), Budget(peak_mb=12.0)), m, ("cpu", "board"))
    assert fits((), m, ("cpu",))  # a Pareto study: no budget


def test_a_figure_that_was_not_recorded_is_over_its_budget():
    m = Metrics(latency_ms=1.0)
    assert excess((Budget(model_mb=1.0, peak_mb=1.0),), m, ("cpu",)) == {"model_mb": UNKNOWN, "peak_mb": UNKNOWN}
    assert Metrics(latency_ms=1.0, peak_memory_bytes=MIB).peak_on("cpu") is None  # a one-target trial: the primary's field


def test_budgets_round_trip_through_the_study_metadata_and_read_as_text():
    b = Budget(latency_ms=1.0, peak_mb=64.0)
    assert Budget.from_meta(b.to_meta()) == b and not Budget().any and b.any
    assert Budget.from_meta({"budget_ms": 2.0}) == Budget(latency_ms=2.0)  # a study written before memory budgets
    assert budgets_text((b, Budget(model_mb=2.0)), ("cpu", "board")) == "1 ms, peak 64 MiB on cpu; model 2 MiB on board"


@pytest.mark.parametrize("menu, target, search, noted", [
    ('["fp32", "int8"]', 'budget_model_mb = 1.0\ntuning = "database"', "", True),
    ('["fp32", "int8"]', 'tuning = "tune"', 'objectives = ["accuracy", "latency_ms", "model_mb"]', True),
    ('["fp32", "int8"]', 'budget_model_mb = 1.0\ntuning = "off"', "", False),  # untuned builds keep int8 (dequantized per call)
    ('["fp32", "w8a8"]', 'budget_model_mb = 1.0\ntuning = "database"', "", False),  # w8a8 weights stay int8
    ('["fp32", "int8"]', 'budget_ms = 1.0\ntuning = "database"', "", False),  # the stored size is not bounded
])
def test_a_size_bound_study_with_int8_on_a_prepacking_target_is_told_what_its_build_holds(tmp_path, tiny_vit, menu, target, search, noted):
    from vitune.models.layers import discover
    from vitune.search.budgets import int8_size_note
    from vitune.search.studyfile import load_study_file
    from vitune.targets import load_target

    mode = 'mode = "constrained"\n' if "budget" in target else ""
    path = tmp_path / "s.toml"
    path.write_text(f'[study]\nname = "s"\n[target]\nname = "local-cpu"\n{target}\n[search]\n{mode}{search}\n[space]\nprecision = {menu}\n')
    spec = load_study_file(path)
    note = int8_size_note(spec, discover(tiny_vit), load_target("local-cpu"), spec.target)
    assert (note is not None) == noted
    if noted:
        assert note.startswith("local-cpu: note:") and "fp32" in note and "budget_peak_mb" in note

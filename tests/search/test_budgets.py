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

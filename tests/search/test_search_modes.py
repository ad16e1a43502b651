"""Constrained mode, early stopping with every sampler, warm start, tied knobs, result cache.

Latency here is a deterministic stand-in (proportional to the candidate's parameters), so these
tests check the search logic itself; real TVM measurement is covered by the study tests."""

import dataclasses
import json

import optuna
import pytest

from vitune.compression.stats import model_stats
from vitune.costmodels import LatencySource, latency_sources, register_latency_source
from vitune.errors import ConfigError
from vitune.search.evaluate import EarlyStop, Evaluator
from vitune.search.export import export
from vitune.search.front import dominated, front, latency_of
from vitune.search.study import open_study, run_study
from vitune.search.studyfile import load_study_file
from vitune.targets.measure import Measurement

STUDY = """
[study]
name = "{name}"
n_trials = {n}
sampler = "{sampler}"
seed = 2
[target]
name = "{target}"
tuning = "off"
latency = "test-params-latency"
{budget}
[search]
{search}
[space]
precision = ["fp32", "int8"]
rank_fraction = [1.0, 0.5, 0.125]
prune_heads = [0.0, 0.5]
prune_mlp = [0.0, 0.5]
{extra}
"""


class ParamsLatency(LatencySource):
    """latency_ms = parameters / 100,000: deterministic and instant."""

    name = "test-params-latency"

    def latency(self, model, config, example, compiled_out=None):
        params, _ = model_stats(model)
        return Measurement(target=self.profile.name, latency_ms=params / 1e5, samples_ms=(params / 1e5,), spread_ms=0.0, source="test")


if ParamsLatency.name not in latency_sources():
    register_latency_source(ParamsLatency)


def write(tmp_path, target, name, n=6, sampler="random", budget="", search="", extra=""):
    path = tmp_path / f"{name}.toml"
    path.write_text(STUDY.format(name=name, n=n, sampler=sampler, target=target, budget=budget, search=search, extra=extra))
    return load_study_file(path)


def test_constrained_mode_never_exports_a_configuration_over_the_budget(tmp_path, fast_target_file, default_workspace):
    ident_ms = model_stats(default_workspace.model)[0] / 1e5
    budget = round(0.75 * ident_ms, 4)
    spec = write(tmp_path, fast_target_file, "constrained", n=12, sampler="tpe", budget=f"budget_ms = {budget}",
                 search='mode = "constrained"\nmin_fidelity = 0.0')
    run_study(spec, progress=False, log=lambda *_: None)
    study = open_study(spec, create=False)
    assert [d.name for d in study.directions] == ["MAXIMIZE"]
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert any(latency_of(t) > budget for t in complete), "some candidate broke the budget (the uncompressed one does)"
    members = front(study)
    assert members and all(latency_of(t) <= budget for t in members)
    for pick in ("best", "knee", "pareto"):
        doc = export(spec, pick, tmp_path / f"{pick}.json")
        for rec in doc.get("members", [doc]):
            assert rec["metrics"]["latency_ms"] <= budget
    feasible = [t.values[0] for t in complete if latency_of(t) <= budget]
    assert json.loads((tmp_path / "best.json").read_text())["metrics"]["accuracy"] == max(feasible)
    # the samplers saw the constraint
    assert all(t.constraints == {"latency_ms": pytest.approx(latency_of(t) - budget)} for t in complete)


def test_a_model_size_budget_constrains_the_study_its_front_and_its_exports(tmp_path, fast_target_file, default_workspace):
    from vitune.search.front import status_text
    from vitune.search.records import metrics_of

    _, size = model_stats(default_workspace.model)
    budget = round(0.6 * size / 2**20, 4)  # MiB: the uncompressed model is over it

    def mib(t) -> float:
        return metrics_of(t).size_bytes / 2**20

    spec = write(tmp_path, fast_target_file, "small", n=10, sampler="tpe", budget=f"budget_model_mb = {budget}",
                 search='mode = "constrained"\nmin_fidelity = 0.0')
    run_study(spec, progress=False, log=lambda *_: None)
    study = open_study(spec, create=False)
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert any(mib(t) > budget for t in complete) and any(mib(t) <= budget for t in complete)
    members = front(study)
    assert members and all(mib(t) <= budget for t in members)
    for pick in ("best", "knee", "pareto"):
        doc = export(spec, pick, tmp_path / f"{pick}.json")
        assert all(rec["metrics"]["size_bytes"] <= budget * 2**20 for rec in doc.get("members", [doc]))
    assert json.loads((tmp_path / "best.json").read_text())["metrics"]["accuracy"] == max(t.values[0] for t in complete if mib(t) <= budget)
    assert all(t.constraints == {"model_mb": pytest.approx(mib(t) - budget)} for t in complete)  # what the sampler saw
    assert f"only trials within the budget are shown (model {budget:.10g} MiB on test-cpu)" in status_text(spec)


def test_a_peak_memory_budget_needs_a_measured_latency(tmp_path, fast_target_file):
    with pytest.raises(ConfigError, match=r"\[target\] budget_peak_mb: peak memory is read from the build"):
        write(tmp_path, fast_target_file, "peak", budget="budget_peak_mb = 1.0", search='mode = "constrained"')


def test_a_constrained_study_needs_a_budget(tmp_path, fast_target_file):
    with pytest.raises(ConfigError, match=r"\[target\] budget_ms: mode = \"constrained\" needs a budget: latency in ms"):
        write(tmp_path, fast_target_file, "nobudget", search='mode = "constrained"')


def test_a_pareto_study_cannot_resume_as_constrained(tmp_path, fast_target_file, default_workspace):
    spec = write(tmp_path, fast_target_file, "switch", n=1, search="min_fidelity = 0.0")
    run_study(spec, progress=False, log=lambda *_: None)
    again = write(tmp_path, fast_target_file, "switch", n=1, budget="budget_ms = 1.0", search='mode = "constrained"')
    with pytest.raises(ConfigError, match="was created with \\[search\\] mode = 'pareto'"):
        run_study(again, progress=False, log=lambda *_: None)


@pytest.mark.parametrize("sampler", ["evolution", "nsga2", "tpe", "random"])
@pytest.mark.parametrize("mode", ["pareto", "constrained"])
def test_stopped_candidates_are_recorded_as_pruned_with_every_sampler(sampler, mode, tmp_path, fast_target_file, default_workspace):
    budget = "budget_ms = 1.5" if mode == "constrained" else ""
    spec = write(tmp_path, fast_target_file, f"prune-{sampler}-{mode}", n=10, sampler=sampler, budget=budget,
                 search=f'mode = "{mode}"\nmin_fidelity = 0.97\naccuracy_shards = 4\nwarm_start = false')
    summary = run_study(spec, progress=False, log=lambda *_: None)
    study = open_study(spec, create=False)
    pruned = study.get_trials(states=(optuna.trial.TrialState.PRUNED,))
    assert pruned and summary.new_pruned == len(pruned)
    assert all(t.user_attrs["pruned"] for t in pruned)
    assert not study.get_trials(states=(optuna.trial.TrialState.FAIL,))
    assert summary.new_complete + summary.new_pruned == 10


def test_sharded_accuracy_stops_a_dominated_candidate_early(default_workspace, fast_target):
    ev = Evaluator(default_workspace, fast_target, ParamsLatency(fast_target), early=EarlyStop(accuracy_shards=4))
    from vitune.compression.config import CompressionConfig

    config = CompressionConfig.identity()
    result = ev.evaluate(config, front=[(0.999, 0.0)])  # a perfect, free model is on the front: nothing can escape
    assert result.pruned and "hopeless after" in result.pruned
    total = len(default_workspace.data.val)
    assert result.metrics.accuracy_seen == round(total / 4)
    assert result.metrics.accuracy_bound < 0.999
    assert ev.evaluate(config, front=[]).ok


def test_dominance():
    assert dominated(0.9, 2.0, [(0.95, 1.0)])
    assert not dominated(0.9, 0.5, [(0.95, 1.0)])
    assert not dominated(0.9, 1.0, [(0.9, 1.0)])  # equal is not dominated


def test_warm_start_enqueues_uniform_and_guided_configurations_from_a_saved_sweep(tmp_path, fast_target_file, default_workspace):
    from vitune.models.layers import discover
    from vitune.search import warmstart
    from vitune.search.space import SearchSpace

    spec = write(tmp_path, fast_target_file, "warm", n=12, search="min_fidelity = 0.0")
    space = SearchSpace.build(spec.space, discover(default_workspace.model), spec.methods)
    target = load_fast(fast_target_file)
    ev = Evaluator(default_workspace, target, ParamsLatency(target))
    # the study computes its sweep (another test of this session may have saved the same one)
    warmstart._sweep_table(default_workspace, space, ev, spec).path.unlink(missing_ok=True)
    lines: list[str] = []
    run_study(spec, n_trials=4, progress=True, log=lambda *a: lines.append(" ".join(map(str, a))))
    study = open_study(spec, create=False)
    first = [t.params for t in study.trials[:4]]
    assert first[0] == space.identity_params()
    ev.compress = lambda config: (_ for _ in ()).throw(AssertionError("the saved sweep was recomputed"))
    sweep = warmstart.run_sweep(default_workspace, space, ev, spec, progress=False)  # read back, not recomputed
    free = [(n, m) for n, m in space.choices if len(m) > 1 and n != "distill_steps"]
    assert sweep["complete"] and len(sweep["options"]) == sum(len(m) - 1 for _, m in free)
    assert len(sweep["uniform"]) == len(warmstart.uniform_params(space))
    total = len(sweep["options"]) + len(sweep["uniform"]) + 1  # with the uncompressed model
    counts = [line.split()[2].rstrip(":") for line in lines if line.startswith("sensitivity sweep ")]
    assert counts == [f"{i}/{total}" for i in range(1, total + 1)]  # a line per step, counted (no terminal here)
    guided = warmstart.guided_params(space, sweep)
    assert guided and all(g != space.identity_params() for g in guided)
    assert first[1] == guided[0]  # the guided configurations come right after the uncompressed model
    uniform = [p for _, _, p in warmstart.uniform_params(space)]
    assert any(t.params in uniform for t in study.trials[:4]) or len(guided) >= 3

    # front refinement: the uncompressed model joined the front first, so its faster neighbour
    # waits behind the warm start's walk points (up to half of n_trials); resumed, the study reads
    # the saved sweep back and refines on (front members' neighbours along the sensitivity order,
    # each naming the trial it refines)
    from vitune.search.refine import REFINE_ORIGIN, Refiner

    run_study(spec, n_trials=spec.n_trials // 2 - 4 + 2, progress=False, log=lambda *_: None)
    study = open_study(spec, create=False)
    refined = [t for t in study.trials if str(t.user_attrs.get("origin", "")).startswith(REFINE_ORIGIN)]
    assert refined and any(t.state == optuna.trial.TrialState.COMPLETE for t in refined)
    refiner = Refiner(space, sweep)
    for t in refined:
        origin = t.user_attrs["origin"]
        parent = study.trials[int(origin.rsplit(" ", 1)[1])]
        which = "faster" if origin.startswith(f"{REFINE_ORIGIN}: faster") else "more accurate"
        assert (t.system_attrs.get("fixed_params", t.params), which) in refiner.neighbours({**space.identity_params(), **parent.params})


def load_fast(path):
    from vitune.targets import load_target

    return load_target(str(path))


def test_tied_layers_share_one_parameter(tmp_path, fast_target_file, default_workspace):
    from vitune.models.layers import discover
    from vitune.search.space import SearchSpace

    spec = write(tmp_path, fast_target_file, "tied", extra='[[space.tie]]\nlayers = "blocks.*.mlp.fc1"\nknobs = ["rank_fraction", "precision"]')
    space = SearchSpace.build(spec.space, discover(default_workspace.model), spec.methods)
    names = [n for n, _ in space.choices]
    assert "blocks.*.mlp.fc1:rank_fraction" in names and not any(n.startswith("blocks.1.mlp.fc1:") for n in names)
    params = {**space.identity_params(), "blocks.*.mlp.fc1:rank_fraction": 0.5, "blocks.*.mlp.fc1:precision": "int8"}
    config = space.to_config(params)
    fc1 = [spec_ for name, spec_ in config.linear_items if name.endswith("mlp.fc1")]
    assert len(fc1) == 4 and len({(s.rank, s.precision) for s in fc1}) == 1 and fc1[0].precision == "int8"
    bad = write(tmp_path, fast_target_file, "badtie", extra='[[space.tie]]\nlayers = "decoder.*"\nknobs = ["precision"]')
    with pytest.raises(ConfigError, match="matches no layer"):
        SearchSpace.build(bad.space, discover(default_workspace.model), bad.methods)


def test_a_duplicate_configuration_is_served_from_the_study(tmp_path, fast_target_file, default_workspace):
    spec = write(tmp_path, fast_target_file, "dup", n=3, search="min_fidelity = 0.0\nwarm_start = false")
    run_study(spec, n_trials=0, progress=False, log=lambda *_: None)  # creates the study, runs nothing
    study = open_study(spec)
    from vitune.models.layers import discover
    from vitune.search.space import SearchSpace

    space = SearchSpace.build(spec.space, discover(default_workspace.model), spec.methods)
    params = {**space.identity_params(), "blocks.1.mlp.fc2:rank_fraction": 0.5}
    study.enqueue_trial(params)
    study.enqueue_trial(params, skip_if_exists=False)
    run_study(spec, n_trials=2, progress=False, log=lambda *_: None)
    a, b = open_study(spec, create=False).trials[:2]
    assert a.user_attrs["config_key"] == b.user_attrs["config_key"]
    assert b.user_attrs["cached_from"] == a.number
    assert not {"compress_s", "latency_s", "accuracy_s"} & set(b.user_attrs["timings"])  # not evaluated again
    assert b.user_attrs["timings"]["trial_s"] > 0  # its own time is on record (not compared: a cache hit can make the first fast too)
    assert b.values == a.values


def test_memory_objectives_make_a_three_objective_study_whose_front_spans_them(tmp_path, fast_target_file, default_workspace):
    """objectives = accuracy, latency, model size: Optuna stores three values under their names
    (optuna-dashboard shows them), the model size is the trial's stored size in MiB, and the front
    is the set no trial beats in all three (an int8 candidate as fast as an fp32 one but smaller
    stays on it); the study refuses to resume with other objectives."""
    from vitune.search.front import format_front
    from vitune.search.records import metrics_of

    spec = write(tmp_path, fast_target_file, "mem3", n=12, sampler="random",
                 search='objectives = ["accuracy", "latency_ms", "model_mb"]\nmin_fidelity = 0.0\naccuracy_shards = 1')
    run_study(spec, progress=False, log=lambda *_: None)
    study = open_study(spec, create=False)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE", "MINIMIZE"]
    assert study.metric_names == ["accuracy", "latency_ms", "model_mb"]
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    for t in complete:
        m = metrics_of(t)
        assert t.values == pytest.approx([m.accuracy, m.latency_ms, m.size_bytes / 2**20])

    def beats(a, b) -> bool:
        return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))

    points = {t.number: (t.values[0], -t.values[1], -t.values[2]) for t in complete}
    expected = {n for n, p in points.items() if not any(beats(q, p) for q in points.values())}
    keys = {t.user_attrs["config_key"]: t.number for t in complete if t.number in expected}
    assert {t.user_attrs["config_key"] for t in front(study)} == set(keys)
    assert "objectives: accuracy, latency_ms, model_mb" in format_front(study)

    again = write(tmp_path, fast_target_file, "mem3", n=1, search='objectives = ["accuracy", "latency_ms"]\nmin_fidelity = 0.0')
    with pytest.raises(ConfigError, match=r"has the objectives \['accuracy', 'latency_ms', 'model_mb'\], the study file asks for"):
        run_study(again, progress=False, log=lambda *_: None)
    size_only = write(tmp_path, fast_target_file, "mem2", n=2, search='objectives = ["accuracy", "model_mb"]\nmin_fidelity = 0.0')
    run_study(size_only, progress=False, log=lambda *_: None)
    latency_only = write(tmp_path, fast_target_file, "mem2", n=3, search="min_fidelity = 0.0")  # as many objectives, other ones
    with pytest.raises(ConfigError, match=r"minimises \['model_mb'\] beside accuracy, the study file's \[search\] objectives ask for \['latency_ms'\]"):
        run_study(latency_only, progress=False, log=lambda *_: None)


@pytest.mark.parametrize("objectives, message", [
    ('["latency_ms", "accuracy"]', r"\[search\] objectives: the first objective is \"accuracy\""),
    ('["accuracy", "flops"]', r"\[search\] objectives: unknown objective 'flops' \(expected latency_ms, model_mb, peak_mb\)"),
    ('["accuracy"]', r"\[search\] objectives: accuracy and at least one of"),
    ('["accuracy", "model_mb", "model_mb"]', r"\[search\] objectives: accuracy and at least one of"),
    ('["accuracy", "peak_mb"]', r"\[search\] objectives: peak memory is read from the build, and \[target\] latency"),
])
def test_bad_objectives_are_refused_naming_the_key(objectives, message, tmp_path, fast_target_file):
    with pytest.raises(ConfigError, match=message):
        write(tmp_path, fast_target_file, "bad", search=f"objectives = {objectives}")


def test_a_constrained_study_takes_memory_as_budgets_not_objectives(tmp_path, fast_target_file):
    with pytest.raises(ConfigError, match=r"\[search\] objectives: a constrained study maximises accuracy within its budgets"):
        write(tmp_path, fast_target_file, "c", budget="budget_ms = 1.0", search='mode = "constrained"\nobjectives = ["accuracy", "latency_ms", "model_mb"]')


class HalfParamsLatency(ParamsLatency):
    """Another latency source (another target, seed file or build code, as far as a sweep's key goes)."""

    name = "test-half-params-latency"

    def latency(self, model, config, example, compiled_out=None):
        m = super().latency(model, config, example, compiled_out)
        return dataclasses.replace(m, latency_ms=m.latency_ms / 2, samples_ms=(m.latency_ms / 2,))


def test_a_sweep_for_another_latency_measures_only_its_uniform_configurations_again(tmp_path, fast_target_file, default_workspace):
    from vitune.models.layers import discover
    from vitune.search import warmstart
    from vitune.search.space import SearchSpace

    spec = write(tmp_path, fast_target_file, "sweep-split", n=4, search="min_fidelity = 0.0")
    space = SearchSpace.build(spec.space, discover(default_workspace.model), spec.methods)
    target = load_fast(fast_target_file)
    first_ev, ev = Evaluator(default_workspace, target, ParamsLatency(target)), Evaluator(default_workspace, target, HalfParamsLatency(target))
    first = warmstart.run_sweep(default_workspace, space, first_ev, spec, progress=False)
    assert warmstart.sweep_key(default_workspace, space, ev, spec) != warmstart.sweep_key(default_workspace, space, first_ev, spec)
    assert warmstart.options_key(default_workspace, space, ev, spec) == warmstart.options_key(default_workspace, space, first_ev, spec)
    warmstart._sweep_table(default_workspace, space, ev, spec).path.unlink(missing_ok=True)
    lines: list[str] = []
    sweep = warmstart.run_sweep(default_workspace, space, ev, spec, progress=True, log=lines.append)
    option_lines = [line for line in lines if " alone, " in line]
    assert len(option_lines) == len(first["options"]) and all("(saved by an earlier run)" in line for line in option_lines)
    assert sweep["options"] == first["options"]
    assert [r["latency_ms"] for r in sweep["uniform"]] == pytest.approx([r["latency_ms"] / 2 for r in first["uniform"]])

    # a sweep saved by a version that kept its option rows with it (under the full key), all of
    # them measured: every row is reused, and the options table is written from them
    options = warmstart._options_table(default_workspace, space, ev, spec)
    progress = dict(options.get("progress"))
    options.path.unlink()
    old = warmstart._sweep_table(default_workspace, space, ev, spec)
    old.path.unlink()
    old = warmstart._sweep_table(default_workspace, space, ev, spec)
    old.put("progress", progress)
    old.save()
    lines.clear()
    assert warmstart.run_sweep(default_workspace, space, ev, spec, progress=True, log=lines.append)["options"] == first["options"]
    assert all("(saved by an earlier run)" in line for line in lines if " alone, " in line)
    assert warmstart._options_table(default_workspace, space, ev, spec).get("progress") == progress

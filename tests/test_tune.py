"""vitune tune --cover: the covering configurations of a space build every kernel its candidates build."""

from pathlib import Path

import pytest
import torch


@pytest.mark.slow
def test_after_the_covering_configurations_a_random_candidate_tunes_nothing(fast_target, tmp_path):
    from vitune.search.studyfile import parse_study
    from vitune.tune import tune_study_models

    spec = parse_study({"study": {"name": "tune-cover"},
                        "space": {"precision": ["fp32", "int8", "w8a8"], "rank_fraction": [1.0, 0.5], "prune_heads": [0.0, 0.34],
                                  "prune_mlp": [0.0], "distill_steps": [0]}}, Path(tmp_path) / "study.toml")
    lines: list[str] = []
    run = tune_study_models(spec, fast_target, trials_per_task=4, configs=3, budget_s=0.0, log=lines.append, cover=True)
    covering = [r for r in run.rows if r["model"].startswith("cover")]
    drawn = [r for r in run.rows if r["random"]]
    # an attention unit: (3 precisions x 2 ranks)^2 x 2 head prunings = 72 combinations, in 4 blocks: 18 configurations
    assert len(covering) == 18 and len(drawn) == 3
    assert all(r["error"] is None for r in run.rows)
    assert sum(r["new_workloads"] for r in covering) > 0  # compressed shapes the uncompressed model lacks
    # every kernel they build was built by a covering configuration: tuned then, unless each of
    # its tuning candidates failed (a loud machine: "stopped past their deadline"), when a random
    # configuration meeting it tunes it again
    left = sum(r["untuned_workloads"] or 0 for r in covering)
    assert sum(r["new_workloads"] for r in drawn) <= left, [(r["model"], r["new_workloads"]) for r in drawn] + lines[-4:]
    if left:
        return
    assert "every kernel they build was in the database" in lines[-1]


def test_every_kernel_of_a_random_candidate_is_built_by_a_covering_configuration(tiny_vit, fast_target, monkeypatch):
    """The claim behind --cover, checked on the tuning tasks themselves (no tuning): MetaSchedule's
    own workload matching finds each task of random candidates among the covering ones' tasks."""
    from tvm.s_tir import meta_schedule as ms

    from vitune.compression.pipeline import compress_structural
    from vitune.models.layers import discover
    from vitune.search.space import SearchSpace
    from vitune.search.studyfile import SpaceSpec
    from vitune.targets.compile import export_relax
    from vitune.targets.tuning import Tuner

    space = SearchSpace.build(SpaceSpec(precision=("fp32", "w8a8"), rank_fraction=(1.0, 0.5), prune_heads=(0.0, 0.5), prune_mlp=(0.0, 0.5)),
                              discover(tiny_vit))
    found: list = []
    monkeypatch.setattr(Tuner, "_has_record", staticmethod(lambda db, task, target: found.append(task.dispatched[0]) and False))
    monkeypatch.setattr(Tuner, "seeds", property(lambda self: []))
    tuner = Tuner(fast_target, "database")
    x = torch.randn(1, 1, 8, 8)

    def tasks(config):
        found.clear()
        model = tiny_vit if config is None else compress_structural(tiny_vit, config)
        tuner.prepare(export_relax(model, x)[0])
        return list(found)

    db = ms.database.MemoryDatabase(module_equality="structural")
    for config in [None, *space.covering_configs()]:
        for mod in tasks(config):
            db.commit_workload(mod)
    for config in space.random_configs(4, seed=3, fixed={"distill_steps": 0}):
        assert all(db.has_workload(mod) for mod in tasks(config)), config.summary()


@pytest.mark.parametrize("argv, expected", [([], 7), (["--trials-per-task", "3"], 3)])
def test_tune_with_a_study_uses_its_tuning_trials_unless_told(tmp_path, monkeypatch, argv, expected):
    """`vitune tune --study F` tunes at F's `[target] tuning_trials` (what the study's own trials
    would tune at), not at a fixed 64; `--trials-per-task` overrides it."""
    import vitune.tune
    from vitune.cli import main

    study = tmp_path / "s.toml"
    study.write_text('[study]\nname = "t"\n\n[target]\nname = "local-cpu"\ntuning_trials = 7\n')
    seen = []
    monkeypatch.setattr(vitune.tune, "tune_study_models", lambda spec, profile, trials, *a, **k: seen.append(trials) or vitune.tune.TuneRun(database="db"))
    assert main(["tune", "local-cpu", "--study", str(study), *argv]) == 0
    assert seen == [expected]

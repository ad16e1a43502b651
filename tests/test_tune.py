"""vitune tune --cover: the covering configurations of a space build every kernel its candidates build."""

from pathlib import Path

import pytest


@pytest.mark.slow
def test_after_the_covering_configurations_a_random_candidate_tunes_nothing(fast_target, tmp_path):
    from vitune.search.studyfile import parse_study
    from vitune.tune import tune_study_models

    spec = parse_study({"study": {"name": "tune-cover"},
                        "space": {"precision": ["fp32", "int8", "w8a8"], "rank_fraction": [1.0, 0.5], "prune_heads": [0.0, 0.34],
                                  "prune_mlp": [0.0], "distill_steps": [0]}}, Path(tmp_path) / "study.toml")
    lines: list[str] = []
    run = tune_study_models(spec, fast_target, trials_per_task=2, configs=3, budget_s=0.0, log=lines.append, cover=True)
    covering = [r for r in run.rows if r["model"].startswith("cover")]
    drawn = [r for r in run.rows if r["random"]]
    # an attention unit: (3 precisions x 2 ranks)^2 x 2 head prunings = 72 combinations, in 4 blocks: 18 configurations
    assert len(covering) == 18 and len(drawn) == 3
    assert all(r["error"] is None for r in run.rows)
    assert sum(r["new_workloads"] for r in covering) > 0  # compressed shapes the uncompressed model lacks
    assert all(r["new_workloads"] == 0 and not r["untuned_workloads"] for r in drawn), drawn
    assert "every kernel they build was in the database" in lines[-1]

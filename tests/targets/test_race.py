"""Schedules raced on this machine (vitune.targets.race): the faster of own and seed is kept."""

import gzip
import json

import torch
from torch import nn

from vitune.targets.compile import compile_model
from vitune.targets.race import race_seeds
from vitune.targets.seeds import best_records, export_seed
from vitune.targets.tuning import Tuner, database_dir, open_database


def _best_traces(folder) -> dict[str, tuple[str, float]]:
    """{workload hash: (trace JSON, mean run time)} of a database folder's best records."""
    from vitune.targets.seeds import json_lines, mean_run_s

    workloads, records = json_lines(folder / "workloads.json"), json_lines(folder / "records.json")
    return {workloads[i][0]: (json.dumps(rec[1][0]), mean_run_s(rec)) for i, rec in best_records(records).items()}


def test_a_seed_schedule_faster_here_replaces_the_machine_s_own_and_a_slower_one_does_not(fast_target, fast_target_file, tmp_path, monkeypatch, capsys):
    from tvm import s_tir
    from tvm.s_tir import meta_schedule as ms

    torch.manual_seed(0)
    model, x = nn.Sequential(nn.Linear(128, 256), nn.ReLU()).eval(), torch.randn(1, 64, 128)
    monkeypatch.setenv("VITUNE_SEEDS", "0")
    monkeypatch.setenv("VITUNE_CACHE_DIR", str(tmp_path / "elsewhere"))
    tuned = compile_model(model, x, fast_target, Tuner(fast_target, "tune", trials_per_task=4))
    assert tuned.tuning.tuned == tuned.tuning.workloads > 0
    seed = tmp_path / "seeds" / "elsewhere.json.gz"
    export_seed(database_dir(fast_target), seed, fast_target, note="4 trials per workload")
    seeded = _best_traces(database_dir(fast_target))

    # this machine: its own database holds each workload with the unscheduled loop nest (serial,
    # scalar), recorded as if it were fast, so builds would take it over the seed's
    monkeypatch.delenv("VITUNE_SEEDS")
    monkeypatch.setenv("VITUNE_SEEDS_DIR", str(seed.parent))
    monkeypatch.setenv("VITUNE_CACHE_DIR", str(tmp_path / "here"))
    data = json.loads(gzip.decompress(seed.read_bytes()))
    db = open_database(fast_target)
    target = fast_target.tvm()
    for line in data["workloads"]:
        mod = ms.database.Workload.from_json(line).mod
        workload = db.commit_workload(mod)
        naive = s_tir.Schedule(mod).trace
        db.commit_tuning_record(ms.database.TuningRecord(naive, workload, [1e-9], target, ms.arg_info.ArgInfo.from_entry_func(mod)))
    before = _best_traces(database_dir(fast_target))
    assert set(before) == set(seeded) and all(before[h][0] != seeded[h][0] for h in before)

    lines: list[str] = []
    tuner = Tuner(fast_target, "tune")
    races = race_seeds(tuner, rounds=3, log=lines.append)
    tuner.close()
    assert len(races) == len(seeded) and not any(r.error for r in races)
    assert lines[0].startswith(f"racing {len(seeded)} of the {len(seeded)} workloads") and "elsewhere.json.gz" in lines[0]
    matmul = [r for r in races if "[256,128]" in r.workload or "[128,256]" in r.workload]
    assert matmul and all(r.adopted and r.seed_over_own < 0.5 for r in matmul), races  # vectorised, parallel against serial
    after = _best_traces(database_dir(fast_target))
    for r, h in zip(races, before):
        if r.adopted:  # the seed's schedule is now this database's best, on its scale
            assert after[h][0] == seeded[h][0] and after[h][1] < before[h][1]
        else:
            assert after[h] == before[h]

    # raced again: the machine's best is the seed's schedule itself, and stays it
    tuner = Tuner(fast_target, "tune")
    race_seeds(tuner, rounds=3)
    tuner.close()
    final = _best_traces(database_dir(fast_target))
    assert all(final[h][0] == seeded[h][0] for r, h in zip(races, before) if r.adopted)
    # and a build takes the adopted schedule from the machine's own database
    built = compile_model(model, x, fast_target, Tuner(fast_target, "database"))
    assert built.tuning.from_database == built.tuning.workloads and built.tuning.from_seed == 0

    # the command: one line per race, then the summary; nothing to race without a seed
    from vitune.cli import main

    capsys.readouterr()
    assert main(["tune", str(fast_target_file), "--race-seeds"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith(f"raced {len(seeded)} workloads of {database_dir(fast_target)} (0 not timed): ") and "race 1/" in out[1]
    monkeypatch.setenv("VITUNE_SEEDS", "0")
    assert main(["tune", str(fast_target_file), "--race-seeds"]) == 0
    assert capsys.readouterr().out.startswith("nothing to race: no seed fits")

"""Shipped schedules (vitune.targets.seeds): export a tuned database, start a fresh one from it."""

import dataclasses
import gzip
import json
import platform

import numpy as np
import pytest
import torch
from torch import nn

from vitune.errors import ConfigError
from vitune.targets.compile import compile_model
from vitune.targets.runner import runner_for
from vitune.targets.seeds import SHIPPED_DIR, export_seed, find_seeds, read_seed
from vitune.targets.tuning import Tuner, database_dir


def test_a_seed_starts_a_fresh_database_tuned(fast_target, tmp_path, monkeypatch):
    torch.manual_seed(0)
    model, x = nn.Sequential(nn.Linear(16, 40), nn.GELU(), nn.Linear(40, 8)).eval(), torch.randn(1, 5, 16)
    monkeypatch.setenv("VITUNE_CACHE_DIR", str(tmp_path / "tuned-here"))
    tuned = compile_model(model, x, fast_target, Tuner(fast_target, "tune", trials_per_task=4))
    assert tuned.tuning.tuned == tuned.tuning.workloads > 0

    seed = tmp_path / "seeds" / "test.json.gz"
    assert export_seed(database_dir(fast_target), seed, fast_target, note="4 trials per workload") == tuned.tuning.workloads
    meta = read_seed(seed)[0]
    assert meta.workloads == tuned.tuning.workloads and meta.fit(fast_target) == "exact"

    # another machine of the same kind: a fresh cache, the seed in the user's seed folder
    monkeypatch.setenv("VITUNE_CACHE_DIR", str(tmp_path / "fresh"))
    monkeypatch.setenv("VITUNE_SEEDS_DIR", str(seed.parent))
    tuner = Tuner(fast_target, "tune", trials_per_task=4)
    assert [s.path for s, _ in tuner.seeds][:1] == [seed]
    again = compile_model(model, x, fast_target, tuner)
    rep = again.tuning
    assert rep.tuned == 0 and rep.trials == 0 and rep.untuned == 0
    assert rep.from_seed == rep.from_database == rep.workloads
    assert "shipped schedules, tuned on" in rep.line()
    np.testing.assert_allclose(runner_for(fast_target).run(again, x.numpy()), model(x).detach().numpy(), atol=1e-4)
    assert not (database_dir(fast_target) / "records.json").exists() or "NT_matmul" not in (database_dir(fast_target) / "records.json").read_text()

    # turned off, the same fresh machine has nothing
    monkeypatch.setenv("VITUNE_SEEDS", "0")
    assert Tuner(fast_target, "database").seeds == []
    off = compile_model(model, x, fast_target, Tuner(fast_target, "database"))
    assert off.tuning.from_seed == 0 and off.tuning.untuned == off.tuning.workloads


def test_a_seed_fits_only_its_kind_of_target(fast_target, tmp_path):
    seed = tmp_path / "s.json.gz"
    data = {"vitune_seed": 1, "meta": {"tvm": "0.0", "runtime": 0, "target": {}, "threads": 1, "machine": "x", "cpu": "c",
                                          "made": "d", "note": ""}, "workloads": [], "records": []}
    seed.write_bytes(gzip.compress(json.dumps(data).encode()))
    s = read_seed(seed)[0]
    assert s.fit(fast_target) is None  # another TVM
    from vitune.targets.profile import TIMING_RUNTIME
    from vitune.versions import versions

    import platform

    same = dataclasses.replace(s.meta, tvm=versions()["tvm"], runtime=TIMING_RUNTIME, target=dict(fast_target.tvm_target),
                               threads=fast_target.threads, machine=platform.machine())
    assert dataclasses.replace(s, meta=same).fit(fast_target) == "exact"
    other_cpu = dataclasses.replace(same, target={**same.target, "mcpu": "some-other-cpu"})
    assert dataclasses.replace(s, meta=other_cpu).fit(fast_target) == "other-cpu"
    assert "some-other-cpu, not this CPU" in dataclasses.replace(s, meta=other_cpu).label(fast_target)
    assert dataclasses.replace(s, meta=dataclasses.replace(same, threads=same.threads + 1)).fit(fast_target) is None
    assert dataclasses.replace(s, meta=dataclasses.replace(same, target={**same.target, "mtriple": "aarch64-linux-gnu"})).fit(fast_target) is None

    # the tuning report says where the schedules a build took were tuned
    mine, theirs = dataclasses.replace(s, meta=same), dataclasses.replace(s, meta=other_cpu)
    tuner = Tuner(fast_target, "tune")
    assert tuner.seed_note([theirs]) == ", tuned on some-other-cpu, not this CPU"
    assert tuner.seed_note([mine]) == f", tuned on {same.mcpu}"
    assert tuner.seed_note([mine, theirs]) == f", tuned on {same.mcpu} (this CPU model) and some-other-cpu (not this CPU)"


@pytest.mark.parametrize("content, says", [
    (b"not gzip", "not a vitune seed file"),
    (gzip.compress(b"[1, 2]"), "format 1"),
    (gzip.compress(json.dumps({"vitune_seed": 1, "meta": {"tvm": "x"}}).encode()), "lacks key(s) runtime"),
    (gzip.compress(json.dumps({"vitune_seed": 1, "meta": dict.fromkeys(("tvm", "runtime", "target", "threads", "machine", "cpu", "made", "note"), ""),
                               "workloads": [], "records": [[3, []]]}).encode()), "records[0]"),
])
def test_a_bad_seed_file_is_one_clear_error(tmp_path, content, says):
    path = tmp_path / "bad.json.gz"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=r"bad\.json\.gz") as err:
        read_seed(path)
    assert says in str(err.value) and "\n" not in str(err.value)


def test_shipped_seeds_read_and_say_where_they_were_tuned():
    shipped = sorted(SHIPPED_DIR.glob("*.json.gz"))
    assert shipped, "vitune ships schedules for its quickstart"
    for path in shipped:
        seed, workloads, records = read_seed(path)
        assert seed.workloads == len(workloads) == len(records) > 50
        assert seed.meta.target["kind"] == "llvm" and seed.meta.cpu and seed.meta.note


def test_find_seeds_keeps_those_that_fit(fast_target, monkeypatch, tmp_path):
    monkeypatch.setenv("VITUNE_SEEDS_DIR", str(tmp_path))
    assert all(s.fit(fast_target) is not None for s in find_seeds(fast_target))
    monkeypatch.setenv("VITUNE_SEEDS", "0")
    assert find_seeds(fast_target) == []


@pytest.mark.skipif(platform.machine() != "x86_64", reason="x86 CPU models")
@pytest.mark.parametrize("mcpu, first", [
    ("znver3", "znver3"),  # this CPU model's own
    ("haswell", "znver3"),  # AVX2: the other AVX2 CPU's schedules
    ("alderlake", "znver3"),  # AVX2 + AVX-VNNI, no AVX-512
    ("skylake-avx512", "znver5"),  # AVX-512 without VNNI: still the AVX-512 CPU's
    ("sapphirerapids", "znver5"),
])
def test_seeds_of_other_cpu_models_come_by_vector_width(tmp_path, monkeypatch, mcpu, first):
    """With no seed of this CPU model, the seed of a CPU with the same vector width builds a
    workload both seeds hold (the first that has it wins): an AVX-512 CPU takes an AVX-512 CPU's
    tiling before an AVX2 one's, whatever the files' names."""
    from vitune.targets import load_target, seeds
    from vitune.targets.profile import TIMING_RUNTIME
    from vitune.versions import versions

    monkeypatch.setattr(seeds, "SHIPPED_DIR", tmp_path / "none shipped")
    monkeypatch.setenv("VITUNE_SEEDS_DIR", str(tmp_path))
    profile = dataclasses.replace(load_target("local-cpu"), tvm_target={"kind": "llvm", "mcpu": mcpu, "num-cores": 2})
    for name, seed_cpu in (("a.json.gz", "znver5"), ("b.json.gz", "znver3")):  # name order opposite to znver3 first
        meta = {"tvm": versions()["tvm"], "runtime": TIMING_RUNTIME, "target": {"kind": "llvm", "mcpu": seed_cpu, "num-cores": 2},
                "threads": profile.threads, "machine": platform.machine(), "cpu": seed_cpu, "made": "2026-12-04", "note": "test"}
        (tmp_path / name).write_bytes(gzip.compress(json.dumps({"vitune_seed": 1, "meta": meta, "workloads": [], "records": []}).encode()))
    found = [s.meta.mcpu for s in find_seeds(profile)]
    assert sorted(found) == ["znver3", "znver5"] and found[0] == first


def test_a_seed_from_another_cpu_model_serves_studies_but_vitune_tune_tunes_anew(fast_target, tmp_path, monkeypatch):
    torch.manual_seed(0)
    model, x = nn.Sequential(nn.Linear(16, 24), nn.GELU(), nn.Linear(24, 12)).eval(), torch.randn(1, 3, 16)
    monkeypatch.setenv("VITUNE_CACHE_DIR", str(tmp_path / "tuned-elsewhere"))
    compile_model(model, x, fast_target, Tuner(fast_target, "tune", trials_per_task=4))
    seed = tmp_path / "seeds" / "other.json.gz"
    export_seed(database_dir(fast_target), seed, fast_target)
    data = json.loads(gzip.decompress(seed.read_bytes()))
    data["meta"]["target"] = {**data["meta"]["target"], "mcpu": "some-other-cpu"}
    seed.write_bytes(gzip.compress(json.dumps(data).encode()))

    monkeypatch.setenv("VITUNE_CACHE_DIR", str(tmp_path / "fresh"))
    monkeypatch.setenv("VITUNE_SEEDS_DIR", str(seed.parent))
    study_build = compile_model(model, x, fast_target, Tuner(fast_target, "tune", trials_per_task=4))
    assert study_build.tuning.from_seed == study_build.tuning.workloads and study_build.tuning.tuned == 0
    assert "tuned on some-other-cpu, not this CPU" in study_build.tuning.line()
    own = compile_model(model, x, fast_target, Tuner(fast_target, "tune", trials_per_task=4, other_cpu_seeds=False))
    assert own.tuning.from_seed == 0 and own.tuning.tuned == own.tuning.workloads


def test_shipped_seeds_open_in_a_fresh_process(tmp_path):
    """A seed's records may tensorize (the VNNI kernels of w8a8): a new interpreter opens it as a
    database without having tuned anything first (the intrinsics are registered on opening)."""
    import os
    import subprocess
    import sys

    code = (
        "from vitune.targets.seeds import SHIPPED_DIR, open_seed, read_seed\n"
        "for path in sorted(SHIPPED_DIR.glob('*.json.gz')):\n"
        "    seed = read_seed(path)[0]\n"
        "    print(seed.workloads, len(open_seed(seed).get_all_tuning_records()))\n"
    )
    env = {**os.environ, "VITUNE_CACHE_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    for line in done.stdout.split("\n"):
        if line.strip():
            workloads, records = (int(v) for v in line.split())
            assert records == workloads > 50


def _prepared(model, x, profile, tuner):
    """``tuner.prepare`` on the model's Relax module: (its script, the tuning report)."""
    from vitune.targets.compile import export_relax
    from vitune.targets.graph import optimize

    mod, _ = export_relax(model, x)
    out, report = tuner.prepare(optimize(mod, profile.tvm(), vnni=True))
    return out.script(), report


@pytest.mark.parametrize("seed_cpu,own_s,seed_wins", [("this", 1.0, True), ("this", 1e-9, False), ("other", 1.0, False)])
def test_a_machine_record_timed_slower_than_this_cpu_model_s_seed_gives_way(fast_target, tmp_path, monkeypatch, seed_cpu, own_s, seed_wins):
    from tvm import s_tir
    from tvm.s_tir import meta_schedule as ms

    from vitune.targets.tuning import open_database

    torch.manual_seed(0)
    model, x = nn.Sequential(nn.Linear(64, 96), nn.ReLU()).eval(), torch.randn(1, 16, 64)
    monkeypatch.setenv("VITUNE_SEEDS", "0")
    monkeypatch.setenv("VITUNE_CACHE_DIR", str(tmp_path / "elsewhere"))
    compile_model(model, x, fast_target, Tuner(fast_target, "tune", trials_per_task=4))
    seed = tmp_path / "seeds" / "s.json.gz"
    export_seed(database_dir(fast_target), seed, fast_target)
    data = json.loads(gzip.decompress(seed.read_bytes()))
    if seed_cpu == "other":
        data["meta"]["target"] = {**data["meta"]["target"], "mcpu": "some-other-cpu"}
        seed.write_bytes(gzip.compress(json.dumps(data).encode()))
    monkeypatch.setenv("VITUNE_SEEDS_DIR", str(seed.parent))

    # the seed's schedules alone (a fresh machine), and the machine's own alone (seeds off)
    monkeypatch.delenv("VITUNE_SEEDS")
    monkeypatch.setenv("VITUNE_CACHE_DIR", str(tmp_path / "fresh"))
    seeded, _ = _prepared(model, x, fast_target, Tuner(fast_target, "database"))
    monkeypatch.setenv("VITUNE_CACHE_DIR", str(tmp_path / "here"))
    db, target = open_database(fast_target), fast_target.tvm()
    for line in data["workloads"]:  # this machine holds every workload, as the unscheduled loop nest timed at own_s
        mod = ms.database.Workload.from_json(line).mod
        sch = s_tir.Schedule(mod)
        sch.get_sblock("root")  # a trace of one instruction that changes nothing (an empty one is no record to a union)
        record = ms.database.TuningRecord(sch.trace, db.commit_workload(mod), [own_s], target, ms.arg_info.ArgInfo.from_entry_func(mod))
        db.commit_tuning_record(record)
    monkeypatch.setenv("VITUNE_SEEDS", "0")
    own, _ = _prepared(model, x, fast_target, Tuner(fast_target, "database"))
    assert own != seeded
    monkeypatch.delenv("VITUNE_SEEDS")

    built, report = _prepared(model, x, fast_target, Tuner(fast_target, "database"))
    assert built == (seeded if seed_wins else own)
    assert report.untuned == 0 and report.from_database == report.workloads
    assert report.from_seed == (report.workloads if seed_wins else 0)


def test_a_seed_grows_by_what_a_machine_tuned_beside_it(fast_target, tmp_path, monkeypatch):
    torch.manual_seed(0)
    x = torch.randn(1, 5, 16)
    first, second = (nn.Sequential(nn.Linear(16, w), nn.GELU(), nn.Linear(w, 8)).eval() for w in (40, 24))
    monkeypatch.setenv("VITUNE_SEEDS_DIR", str(tmp_path / "no-seeds"))
    monkeypatch.setenv("VITUNE_CACHE_DIR", str(tmp_path / "a"))
    a = compile_model(first, x, fast_target, Tuner(fast_target, "tune", trials_per_task=2)).tuning
    seed = tmp_path / "a.json.gz"
    n_a = export_seed(database_dir(fast_target), seed, fast_target)
    assert n_a == a.workloads
    # merged into the database it came from: the same workloads, each once
    assert export_seed(database_dir(fast_target), tmp_path / "same.json.gz", fast_target, merge=seed) == n_a

    monkeypatch.setenv("VITUNE_CACHE_DIR", str(tmp_path / "b"))
    b = compile_model(second, x, fast_target, Tuner(fast_target, "tune", trials_per_task=2)).tuning
    grown = tmp_path / "grown.json.gz"
    n = export_seed(database_dir(fast_target), grown, fast_target, note="a and b", merge=seed)
    _, lines, records = read_seed(grown)
    _, a_lines, _ = read_seed(seed)
    assert max(n_a, b.workloads) < n == len(lines) == len(records) <= n_a + b.workloads
    assert all(w in lines for w in a_lines)  # every workload of the old seed is kept
    assert sorted(r[0] for r in records) == list(range(n))

    # a fresh machine with the grown seed tunes neither model
    monkeypatch.setenv("VITUNE_CACHE_DIR", str(tmp_path / "fresh"))
    monkeypatch.setenv("VITUNE_SEEDS_DIR", str(tmp_path / "only"))
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "grown.json.gz").write_bytes(grown.read_bytes())
    for model in (first, second):
        rep = compile_model(model, x, fast_target, Tuner(fast_target, "tune", trials_per_task=2)).tuning
        assert rep.tuned == 0 and rep.from_seed == rep.workloads

    # a seed of another CPU model is not merged: its times do not compare
    data = json.loads(gzip.decompress(seed.read_bytes()))
    data["meta"]["target"] = {**data["meta"]["target"], "mcpu": "some-other-cpu"}
    other = tmp_path / "other.json.gz"
    other.write_bytes(gzip.compress(json.dumps(data).encode()))
    with pytest.raises(ConfigError, match="other.json.gz: made for another target or CPU model .*some-other-cpu.*not merged"):
        export_seed(database_dir(fast_target), tmp_path / "x.json.gz", fast_target, merge=other)

"""Schedules raced on this machine: its own tuning against the seeds' for the same workload.

A study builds a workload with the machine's own record where its database has one, else with a
seed's (:mod:`vitune.targets.seeds`). Tuning here at a small budget does not always beat a seed
tuned elsewhere: on an Intel Xeon (emeraldrapids), 32 trials per workload gave MLP kernels of a
pruned block 1.4x faster than the Zen 5 seed's and the uncompressed model's kernels 4 % slower
(``bench/seeds.py``). Run times recorded on two machines cannot be compared, so :func:`race_seeds`
builds both schedules of every workload the database shares with a seed and times them here, in
alternation (``rounds`` rounds, fastest run of each); where the seed's schedule is faster by more
than ``margin``, it goes into this machine's database as a record whose run time is the own best
record's scaled by the measured ratio, so builds (and a seed exported from this database) take it.

    vitune tune local-cpu --study studies/quickstart.toml --cover   # tune here
    vitune tune local-cpu --race-seeds                              # keep the faster of each pair
    vitune tune local-cpu --export-seed my-cpu.json.gz              # ship the best of both
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

from vitune.errors import message_line, short_reason
from vitune.targets.seeds import best_records, json_lines


@dataclass(frozen=True)
class Race:
    """One workload's two schedules timed here: the fastest run of each (seconds)."""

    workload: str  # the kernel's buffers: ``main(float32[1,17,64], ... -> float32[1,17,192])``
    seed: str  # the seed file whose schedule raced
    own_s: float
    seed_s: float
    adopted: bool  # the seed's schedule went into this machine's database
    error: str = ""  # why the pair was not timed ("" when it was)

    @property
    def seed_over_own(self) -> float:
        return self.seed_s / self.own_s if self.own_s > 0 and math.isfinite(self.own_s) else math.nan


def _best_by_hash(workload_lines: list, record_lines: list) -> dict[str, tuple[list, list]]:
    """``{workload hash: (workload line, its best record line)}`` of a database or seed file."""
    return {str(workload_lines[i][0]): (workload_lines[i], rec) for i, rec in best_records(record_lines).items()}


def race_seeds(tuner, rounds: int = 5, margin: float = 0.03, log: Callable[[str], None] = lambda line: None) -> list[Race]:
    """Race every workload of ``tuner``'s database against the first seed that holds it (the
    seeds a build would read, in their order); adopt the seed's schedule where it is faster by
    more than ``margin``. A pair that fails to build or run is reported with its error and left
    as it was."""
    from tvm.s_tir import meta_schedule as ms

    from vitune.targets.seeds import mean_run_s, read_seed
    from vitune.targets.tuning import database_lock, import_tensor_intrinsics, open_database

    import_tensor_intrinsics()
    folder = tuner.database_path
    with database_lock(folder, exclusive=False):
        own = _best_by_hash(json_lines(folder / "workloads.json"), json_lines(folder / "records.json"))
    seeds = []
    for seed, _ in tuner.seeds:
        _, workloads, records = read_seed(seed.path)
        seeds.append((seed.path.name, _best_by_hash(workloads, records)))
    pairs = [(h, next(((name, recs[h]) for name, recs in seeds if h in recs), None)) for h in own]
    pairs = [(h, theirs) for h, theirs in pairs if theirs is not None]
    log(f"racing {len(pairs)} of the {len(own)} workloads of {folder} against {', '.join(n for n, _ in seeds) or 'no seed'} "
        f"({rounds} rounds each)")
    target = tuner.profile.tvm()
    races: list[Race] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vitune-race-") as work:
        builder, runner = tuner.builder_runner(work, repeat=3)
        try:
            for i, (h, (seed_name, theirs)) in enumerate(pairs):
                races.append(_race(builder, runner, target, own[h], theirs, seed_name, rounds, margin))
                r = races[-1]
                if r.error:
                    log(f"race {i + 1}/{len(pairs)}: {r.workload}: not timed ({r.error})")
                else:
                    log(f"race {i + 1}/{len(pairs)}: {r.workload}: own {r.own_s * 1e6:.1f} us, {seed_name} {r.seed_s * 1e6:.1f} us"
                        + (" -> the seed's" if r.adopted else "") + f" ({time.perf_counter() - t0:.0f} s)")
        finally:
            getattr(runner, "close", lambda: None)()
    adopted = [(h, theirs, own[h], r) for (h, (_, theirs)), r in zip(pairs, races) if r.adopted]
    if adopted:
        with database_lock(folder, exclusive=True):
            db = open_database(tuner.profile, locked=True)
            for _, (wl_line, rec_line), (_, own_rec), r in adopted:
                workload = db.commit_workload(ms.database.Workload.from_json(wl_line).mod)
                seed_rec = ms.database.TuningRecord.from_json(rec_line[1], workload)
                scaled = mean_run_s(own_rec) * r.seed_s / r.own_s  # on this database's scale, below its best
                db.commit_tuning_record(ms.database.TuningRecord(seed_rec.trace, workload, [scaled], target, seed_rec.args_info))
    return races


def _race(builder, runner, target, own: tuple, theirs: tuple, seed_name: str, rounds: int, margin: float) -> Race:
    """Both schedules of one workload built and timed ``rounds`` times in alternation."""
    from tvm import s_tir
    from tvm.s_tir import meta_schedule as ms

    from vitune.targets.msworker import task_name

    name = "?"
    device = "cpu" if target.kind.name == "llvm" else target.kind.name  # a device, not a code generator
    try:
        candidates = []
        for wl_line, rec_line in (own, theirs):
            workload = ms.database.Workload.from_json(wl_line)
            name = task_name(workload.mod)
            record = ms.database.TuningRecord.from_json(rec_line[1], workload)
            sch = s_tir.Schedule(workload.mod)
            record.trace.apply_to_schedule(sch, remove_postproc=False)
            candidates.append((sch.mod, ms.arg_info.ArgInfo.from_entry_func(sch.mod, remove_preproc=True)))
        best = [math.inf, math.inf]
        for _ in range(rounds):
            for j, (mod, args) in enumerate(candidates):  # alternating: both see the same drift
                # built again each round: the candidate worker runs what it built once (and a
                # schedule that crashes takes the worker down, not this process)
                out = builder.build([ms.builder.BuilderInput(mod, target)])[0]
                if out.error_msg:
                    return Race(name, seed_name, math.inf, math.inf, False, f"build failed: {message_line(str(out.error_msg))}")
                res = runner.run([ms.runner.RunnerInput(out.artifact_path, device, args)])[0].result()
                if res.error_msg:
                    return Race(name, seed_name, best[0], best[1], False, f"run failed: {message_line(str(res.error_msg))}")
                best[j] = min(best[j], min(float(x) for x in res.run_secs))
    except Exception as err:  # noqa: BLE001 -- a pair that cannot race is reported, the rest go on
        return Race(name, seed_name, math.inf, math.inf, False, short_reason(err))
    return Race(name, seed_name, best[0], best[1], best[1] < best[0] * (1.0 - margin))

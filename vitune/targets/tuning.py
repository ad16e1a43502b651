"""Tuned kernels: MetaSchedule with a persistent per-target database shared by every study.

A *workload* is one fused TIR function of a model (a matmul of a given shape and dtype, a
softmax of a given size...): MetaSchedule's database keys its records by the function's
structural hash, so a workload is tuned once and every later candidate, trial or study that
contains it — on the same target — reuses the record. Compressed candidates bring new shapes
(ranks, pruned widths); :class:`Tuner` tunes those on first sight, within a budget.

The database lives in ``<cache>/tuning/<target name>-<hash of the TVM target>/`` as
MetaSchedule's JSON files (``workloads.json``, ``records.json``). Candidates are built (and, for
a local device, timed) in one watched worker process, :mod:`vitune.targets.msworker`: a candidate
whose build or run passes its deadline (the profile's ``[tuning]`` table) or crashes the worker
is failed with its reason, the worker is replaced and tuning carries on; the full reasons go to
the database's ``failures/failures.log``. Targets with an ``rpc`` runner are timed on the device
by :mod:`vitune.targets.msremote`. Processes share the folder through :func:`database_lock`
(one writer at a time, re-reading the files first); a database that no longer opens is
repaired on open, keeping every record that still reads back (:func:`repair_database`).

Modes (``[target] tuning`` in a study file):

* ``off`` — untuned kernels (TVM's default lowering; data movement as :mod:`vitune.targets.schedule`);
* ``database`` — use the records the database has, never tune (after ``vitune tune``);
* ``tune`` — also tune unseen workloads, ``trials_per_task`` MetaSchedule trials each (round
  robin: MetaSchedule's gradient task scheduler starved the small workloads — deit_tiny's
  attention projection got 137 µs from its share of a run against 73 µs from 64 trials of its
  own), until the study's ``tuning_budget_s`` is spent (then unseen workloads stay untuned and
  the trial's metrics say how many).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from vitune.errors import message_line
from vitune.paths import cache_dir

TUNING_MODES = ("off", "database", "tune")
# which shipped schedules stand in for tuning: any (another CPU model's too, said so) | this-cpu
SEED_MODES = ("any", "this-cpu")
# What a study measures unless it says otherwise: the kernels `vitune apply` ships. Untuned
# latency ("off") ranks nothing a user runs (15x to 65x slower than tuned) and is a fallback a
# study file names.
DEFAULT_TUNING = "tune"


def default_tuning(profile) -> str:
    """The tuning mode of a study that names none: :data:`DEFAULT_TUNING` where vitune tunes (a
    CPU of this machine), else ``"database"``: the records ``vitune tune`` made where the device
    runs (its workloads not there stay untuned, and the output says so)."""
    return DEFAULT_TUNING if profile.runner == "local" and profile.is_native else "database"


@dataclass
class TuneReport:
    workloads: int = 0  # distinct tunable workloads in the module
    from_database: int = 0  # ... already in the database
    from_seed: int = 0  # ... of which: from shipped schedules (vitune.targets.seeds), not tuned here
    tuned: int = 0  # ... tuned now
    untuned: int = 0  # ... left untuned (mode or budget)
    trials: int = 0  # candidates built and measured
    failed: int = 0  # candidates that did not build or run (stopped and crashed ones included)
    error: str = ""  # the commonest reason they failed
    stopped: int = 0  # ... of which: stopped past their deadline
    crashed: int = 0  # ... of which: crashed the worker
    failures_log: str = ""  # where the stopped and crashed candidates' full reasons are
    seconds: float = 0.0
    waited_s: float = 0.0  # waiting for another process's tuning into the same database (database_lock)
    names: list[str] = field(default_factory=list)  # tuned workloads
    seed_note: str = ""  # where the shipped schedules were tuned, e.g. " tuned on znver5, not this CPU"

    def merge(self, other: "TuneReport") -> None:
        for k in ("workloads", "from_database", "from_seed", "tuned", "untuned", "trials", "failed", "stopped", "crashed"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        self.error = other.error or self.error
        self.failures_log = other.failures_log or self.failures_log
        self.seed_note = other.seed_note or self.seed_note
        self.seconds += other.seconds
        self.waited_s += other.waited_s
        self.names += other.names

    def line(self) -> str:
        failed = f"; {self.failed} candidates failed, e.g. {self.error}" if self.failed else ""
        if self.stopped or self.crashed:
            failed += f" ({self.stopped} stopped past their deadline, {self.crashed} crashed the worker; full reasons in {self.failures_log})"
        seeded = f" ({self.from_seed} of them shipped schedules{self.seed_note})" if self.from_seed else ""
        return (
            f"{self.workloads} workloads: {self.from_database} from the tuning database{seeded}, {self.tuned} tuned now "
            f"({self.trials} candidates in {self.seconds:.1f} s), {self.untuned} untuned{failed}"
        )


def database_dir(profile) -> Path:
    # schedules are chosen by timing them: on another thread count another one wins
    from vitune.versions import versions

    timing = profile.timing_key()
    # records are keyed by workload (a structural hash): vitune's code changing the graph only
    # adds workloads; another TVM may schedule, build and store them differently
    key = json.dumps({**{k: timing[k] for k in ("target", "host", "threads", "runtime")}, "tvm": versions()["tvm"]}, sort_keys=True)
    return cache_dir() / "tuning" / f"{profile.name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def database_version(profile) -> str:
    """What the target's tuning database holds now, as a short string that changes whenever a
    workload or a record is added (both files are append-only; a repair rewrites them, which
    changes it too). A latency measured with some workloads untuned is only current while this
    string is what it was then."""
    folder = database_dir(profile)
    sizes = [(folder / name).stat().st_size if (folder / name).is_file() else 0 for name in ("workloads.json", "records.json")]
    return "-".join(map(str, sizes))


@contextmanager
def database_lock(folder: Path, exclusive: bool):
    """The database's lock across processes: shared to read its files, exclusive to write them.

    MetaSchedule's JSON database is not safe for two writers: each process numbers the
    workloads it appends by its own in-memory count, so two processes tuning into one folder
    (two study workers, a study beside ``vitune tune``) point each other's records at the
    wrong workloads. Seen here: 1840 of 5317 records of the local CPU's database, every one
    after workload 275, replayed their schedules on another workload and failed
    (``old_outputs.size() == new_outputs.size()``), and the database no longer opened. A
    writer holds this lock and re-reads the files under it (:meth:`Tuner.prepare`)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def open_database(profile, locked: bool = False):
    """The target's database; one that no longer opens, or whose workloads file repeats a
    workload, is repaired first (:func:`repair_database`). ``locked``: the caller holds
    :func:`database_lock` exclusively."""
    folder = database_dir(profile)
    folder.mkdir(parents=True, exist_ok=True)
    if locked:
        return _open_or_repair(folder)
    with database_lock(folder, exclusive=False):
        try:
            if not repeated_workloads(folder):
                return json_database(folder, allow_missing=True)
        except Exception:  # noqa: BLE001 -- TVM raises its own error types; repaired below
            pass
    with database_lock(folder, exclusive=True):  # another process may have repaired it meanwhile
        return _open_or_repair(folder)


def _open_or_repair(folder: Path):
    reason = ""
    repeated = repeated_workloads(folder)
    if repeated:
        reason = f"workloads.json repeats {len(repeated)} workloads (lines {', '.join(str(i + 1) for i in sorted(repeated)[:5])})"
    else:
        try:
            return json_database(folder, allow_missing=True)
        except Exception as err:  # noqa: BLE001
            reason = message_line(err)[:200]
    repair_database(folder, reason)
    return json_database(folder, allow_missing=True)


def _workload_hash(line: str) -> str:
    """The structural hash a workloads.json line starts with (``["<hash>", ...``), without
    parsing the rest of the line."""
    head = line[: line.find(",")] if "," in line else line
    return head.strip('[" ')


def repeated_workloads(folder: Path) -> dict[int, int]:
    """``{line: earlier line}`` for each line of ``workloads.json`` that repeats an earlier
    workload (the same structural hash).

    MetaSchedule reads a repeated workload once, so it numbers the next workload it appends
    by a count one short of the file's lines: from then on every record it writes names the
    workload before its own. Two processes appending the same workload left such a pair in
    the local CPU's database, and a later run's 224 new records all failed to read back."""
    path = folder / "workloads.json"
    if not path.exists():
        return {}
    first: dict[str, int] = {}
    out = {}
    with open(path) as fh:
        for i, line in enumerate(fh):
            h = _workload_hash(line)
            if h in first:
                out[i] = first[h]
            else:
                first[h] = i
    return out


def repair_database(folder: Path, reason: str = "") -> tuple[int, int]:
    """Keep the records of ``folder`` that still read back on their workload; move the files as
    they were to ``unreadable-<time>/`` beside them and say so. Returns ``(kept, dropped)``.

    A workload is kept when it parses and is not a repeat (:func:`repeated_workloads`: a
    repeat's records go to the first); a record is kept when its line parses and its schedule
    replays on the workload it names (what MetaSchedule checks when it opens the database).
    Lines torn by a process killed mid-write are dropped the same way. The caller holds
    :func:`database_lock` exclusively."""
    from tvm.s_tir import meta_schedule as ms

    import_tensor_intrinsics()
    wpath, rpath = folder / "workloads.json", folder / "records.json"
    workloads: list[str] = []
    parsed: list = []  # the kept workloads, read
    index: dict[int, int] = {}  # line of workloads.json -> line of the repaired file
    by_hash: dict[str, int] = {}
    if wpath.exists():
        for i, line in enumerate(wpath.read_text().splitlines()):
            h = _workload_hash(line)
            if h in by_hash:
                index[i] = by_hash[h]
                continue
            try:
                parsed.append(ms.database.Workload.from_json(json.loads(line)))
            except Exception:  # noqa: BLE001
                continue
            index[i] = by_hash[h] = len(workloads)
            workloads.append(line)
    kept, dropped = [], 0
    if rpath.exists():
        for line in rpath.read_text().splitlines():
            try:
                idx, rec = json.loads(line)
                ms.database.TuningRecord.from_json(rec, parsed[index[idx]])
                kept.append(json.dumps([index[idx], rec]))
            except Exception:  # noqa: BLE001
                dropped += 1
    aside = folder / f"unreadable-{time.strftime('%Y%m%d-%H%M%S')}"
    aside.mkdir(exist_ok=True)
    for path, lines in ((wpath, workloads), (rpath, kept)):
        if path.exists():
            path.replace(aside / path.name)
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(f"{line}\n" for line in lines))
        tmp.replace(path)
    logging.getLogger(__name__).warning(
        "tuning database %s needed repair (%s): kept %d records, dropped %d that no longer read back "
        "(their workloads are tuned again on first need); the files as they were are in %s",
        folder, reason, len(kept), dropped, aside,
    )
    return len(kept), dropped


def json_database(folder: Path, allow_missing: bool):
    """MetaSchedule's JSON database in ``folder`` (``workloads.json``, ``records.json``). Records
    that tensorize name their intrinsic (VNNI), which must be registered before they can be read."""
    from tvm.s_tir import meta_schedule as ms

    import_tensor_intrinsics()
    return ms.database.JSONDatabase(str(folder / "workloads.json"), str(folder / "records.json"), allow_missing=allow_missing)


def _quiet() -> None:
    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)


def _drop_unnamed_handlers() -> None:
    """MetaSchedule rebuilds its logger with ``dictConfig``, listing the handlers it has by name;
    an unnamed one (pytest's capture handlers end up there) makes that crash with "'NoneType'
    object has no attribute 'format'". ``dictConfig`` replaces the logger's handlers anyway."""
    logger = logging.getLogger("tvm.s_tir.meta_schedule")
    for handler in list(logger.handlers):
        if handler.get_name() is None:
            logger.removeHandler(handler)


def import_tensor_intrinsics() -> None:
    """Import ``tvm.s_tir.tensor_intrin`` (MetaSchedule needs it) in seconds, not minutes.

    The module parses ~500 TVMScript functions, each calling ``inspect.stack()``, whose
    ``inspect.getmodule`` scans every loaded module on every frame: with torch loaded that took
    170 s here. During the import, ``getmodule`` answers from a memo keyed by the code's file.
    """
    import inspect
    import sys

    from vitune.targets.int8 import register_vnni

    if "tvm.s_tir.tensor_intrin" not in sys.modules:
        original = inspect.getmodule
        memo: dict = {}

        def getmodule(obj, _filename=None):
            code = getattr(obj, "f_code", obj)
            key = (_filename, getattr(code, "co_filename", None) or id(obj))
            if key not in memo:
                memo[key] = original(obj, _filename)
            return memo[key]

        inspect.getmodule = getmodule
        try:
            import tvm.s_tir.tensor_intrin  # noqa: F401
        finally:
            inspect.getmodule = original
    register_vnni()  # TVM 0.27's VNNI intrinsic does not build as registered


def _tunable(task) -> bool:
    """Compute kernels only. Data movement (reshape, transpose, take...) is left to TVM's default
    lowering: tuning it gains little, and with TVM 0.27 MetaSchedule segfaulted on some of
    deit_tiny's data-movement workloads (taking the whole process down)."""
    name = task.task_name
    return any(op in name for op in ("matmul", "conv2d", "softmax", "layer_norm", "gelu", "dense"))


def prepacks(profile, mode: str) -> bool:
    """Whether ``profile``'s builds in tuning ``mode`` lay their weights out once, at build time
    (:func:`lift_weight_layouts`; native local CPUs). Such a build also computes there every
    value that depends on weights alone, a weight-only int8 layer's dequantization included: it
    holds (and its artifact ships) that layer's weight at fp32."""
    return mode != "off" and profile.device_kind == "cpu" and profile.is_native and profile.runner == "local"


def lift_weight_layouts(mod):
    """Move the weight-layout transforms the tuned schedules chose out of the kernels.

    MetaSchedule's ``RewriteLayout`` lets a matmul's schedule read its weight in a tiled layout
    (the weight's buffer is marked layout-free by ``AttachAttrLayoutFreeBuffers``); left inside
    the kernel, the transform would run on every call. ``SplitLayoutRewritePreproc`` splits it
    into a function of its own and ``LiftTransformParams`` gathers those into
    ``main_transform_params``, run once on the weights (``compile.prepack_params``): on
    digits_vit_base, 16 trials per workload, the tuned build ran 3.4 ms against 4.3 ms with weights
    in torch's layout (2.0-2.9 ms laid out at 64 trials).

    ``SplitLayoutRewritePreproc`` only accepts functions made of blocks; hand-written kernels
    (:mod:`vitune.targets.attention`) are plain loops, so they stand aside during the split: a
    block-form stand-in of the same signature takes their place, then they go back.
    """
    from tvm import relax

    aside = {gv: f for gv, f in mod.functions.items() if not isinstance(f, relax.Function) and not _block_form(f)}
    try:
        split = mod.clone()  # the fallback below returns mod as it was
        for gv in aside:
            split[gv] = _stand_in(split, gv)
        split = relax.transform.SplitLayoutRewritePreproc()(split)
    except Exception as err:  # still correct unsplit: each kernel lays its weight out on every call
        logging.getLogger(__name__).warning("weights not prepacked (the layout split failed: %s)", err)
        return mod
    for gv, f in aside.items():
        split[gv] = f
    split = relax.transform.LiftTransformParams()(split)
    return relax.transform.FoldConstant()(split)


def _tune_contexts(tasks, work: str, strategy, threads: int):
    """MetaSchedule's tune contexts for ``tasks`` (as ``extracted_tasks_to_tune_contexts`` makes
    them), the VNNI kernels' with :func:`vitune.targets.int8.vnni_postprocs`."""
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.logging import get_loggers_from_work_dir
    from tvm.s_tir.meta_schedule.utils import fork_seed

    from vitune.targets.int8 import KERNEL, vnni_postprocs

    contexts, weights = [], []
    loggers = get_loggers_from_work_dir(work, [t.task_name for t in tasks])
    for task, logger, rand_state in zip(tasks, loggers, fork_seed(None, n=len(tasks))):
        if task.mod.attrs.get("tirx.is_scheduled", False):
            continue  # as MetaSchedule's own: a hand-scheduled kernel is not tuned
        space = ms.space_generator.PostOrderApply(postprocs=vnni_postprocs()) if KERNEL in task.task_name else "post-order-apply"
        contexts.append(ms.TuneContext(mod=task.dispatched[0], target=task.target, space_generator=space, search_strategy=strategy,
                                       task_name=task.task_name, logger=logger, rand_state=rand_state, num_threads=threads).clone())
        weights.append(task.weight)
    return contexts, weights


def _block_form(func) -> bool:
    import tvm.s_tir as st

    return isinstance(func.body, st.SBlockRealize)


def _stand_in(mod, gv):
    """A block-form PrimFunc with ``gv``'s signature, read from a ``call_tir`` of it."""
    from tvm import te

    call = next(_calls_of(mod, gv))  # StopIteration (never called): the split is skipped
    ins = [te.placeholder([int(x) for x in a.ty.shape], a.ty.dtype, name=f"in{i}") for i, a in enumerate(call.args[1].fields)]
    first = ins[0]
    out = te.compute([int(x) for x in call.ty.shape], lambda *_: first[tuple(0 for _ in first.shape)].astype(call.ty.dtype), name="stand_in")
    return te.create_prim_func([*ins, out]).with_attrs(mod[gv].attrs)


def _calls_of(mod, gv):
    from tvm import relax

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            for block in func.body.blocks:
                for binding in block.bindings:
                    value = binding.value
                    if isinstance(value, relax.Call) and value.args and value.args[0].same_as(gv):
                        yield value


def _best_run_s(db, task, target) -> float | None:
    """The mean run time of ``db``'s best record of ``task`` (None: it holds none)."""
    mod = task.dispatched[0]
    if not db.has_workload(mod):
        return None
    record = db.query_tuning_record(mod, target, task.task_name)
    if record is None or not record.run_secs:
        return None
    secs = [float(getattr(v, "value", v)) for v in record.run_secs]
    return sum(secs) / len(secs)


class Tuner:
    """Tunes and applies records for one target; keeps a running report and a time budget.

    ``worker``: the :class:`~vitune.targets.msworker.CandidateWorker` that builds and times the
    candidates (default: one started on first need with the profile's deadlines, kept for later
    calls, ended by :meth:`close` or with the tuner)."""

    def __init__(self, profile, mode: str = "tune", trials_per_task: int = 64, budget_s: float = 0.0, worker=None,
                 other_cpu_seeds: bool = True):
        if mode not in TUNING_MODES:
            raise ValueError(f"tuning mode {mode!r} is not one of {', '.join(TUNING_MODES)}")
        self.profile = profile
        self.mode = mode
        self.trials_per_task = int(trials_per_task)
        self.budget_s = float(budget_s)
        self.report = TuneReport()
        # weights laid out once for the tuned kernels (see lift_weight_layouts): the layout
        # transform runs on this machine when the build is made, so only for CPU targets this
        # machine runs itself (an RPC board may lack instructions its code uses, even on x86)
        self.prepack = prepacks(profile, mode)
        self._db = None
        self._seeds: list | None = None  # [(Seed, its database)], read on first need
        # False: only seeds tuned on this CPU model count (vitune tune: schedules of this CPU's own)
        self.other_cpu_seeds = other_cpu_seeds
        self._worker = worker

    @property
    def failures_dir(self) -> Path:
        return self.database_path / "failures"

    @property
    def worker(self):
        if self._worker is None:
            from vitune.targets.msworker import CandidateWorker, FailureLog

            self._worker = CandidateWorker(self.profile.tuning, FailureLog(self.failures_dir))
        return self._worker

    def close(self) -> None:
        """End the candidate worker (a later tuning call starts another)."""
        if self._worker is not None:
            self._worker.close()

    @property
    def database_path(self) -> Path:
        return database_dir(self.profile)

    @property
    def database(self):
        if self._db is None:
            self._db = open_database(self.profile)
        return self._db

    @property
    def seeds(self) -> list:
        """The shipped schedules that fit this target (:mod:`vitune.targets.seeds`), below the
        database: ``[(Seed, read-only database)]``."""
        if self._seeds is None:
            from vitune.targets.seeds import find_seeds, open_seed

            fits = find_seeds(self.profile) if self.mode != "off" else []  # untuned builds read no records
            self._seeds = [(seed, open_seed(seed)) for seed in fits if self.other_cpu_seeds or seed.fit(self.profile) == "exact"]
        return self._seeds

    def seed_note(self, used: list) -> str:
        """Where the seeds ``used`` were tuned, e.g. ``", tuned on znver5, not this CPU"``, or
        ``", tuned on emeraldrapids (this CPU model) and znver5 (not this CPU)"``."""
        if not used:
            return ""
        mine = "/".join(sorted({seed.meta.mcpu for seed in used if seed.fit(self.profile) == "exact"}))
        other = "/".join(sorted({seed.meta.mcpu for seed in used if seed.fit(self.profile) != "exact"}))
        if mine and other:
            return f", tuned on {mine} (this CPU model) and {other} (not this CPU)"
        return f", tuned on {mine}" if mine else f", tuned on {other}, not this CPU"

    def _seed_of(self, task, target):
        """The first seed with a record of ``task`` (the order the build applies them in), or None."""
        return next((seed for seed, sdb in self.seeds if self._has_record(sdb, task, target)), None)

    def _seeds_by_cpu(self) -> tuple[list, list]:
        """``(this CPU model's, other CPU models')`` seed databases, in :attr:`seeds`' order: the
        first's recorded run times compare with the machine's own."""
        mine, others = [], []
        for seed, sdb in self.seeds:
            (mine if seed.fit(self.profile) == "exact" else others).append((seed, sdb))
        return mine, others

    def _faster_seed(self, task, target, mine: list):
        """The seed of ``mine`` (this CPU model's) whose record of ``task`` was timed faster than
        the machine's own best record of it (the fastest such), or None: the one the build takes."""
        own = _best_run_s(self.database, task, target)
        if own is None:
            return None
        timed = [(t, seed) for seed, sdb in mine if (t := _best_run_s(sdb, task, target)) is not None and t < own]
        return min(timed, key=lambda pair: pair[0])[1] if timed else None

    def _left_s(self) -> float:
        return float("inf") if self.budget_s <= 0 else self.budget_s - self.report.seconds

    def prepare(self, mod):
        """Legalize and fuse ``mod`` (Relax), tune its unseen workloads as the mode allows, apply
        the database; return ``(module to build, report of this call)``."""
        from tvm import relax
        from tvm.s_tir import meta_schedule as ms

        _quiet()
        import_tensor_intrinsics()
        report = TuneReport()
        if self.mode == "off":
            return mod, report
        target = self.profile.tvm()
        from vitune.targets.schedule import views_for_reshapes

        mod = views_for_reshapes(relax.get_pipeline("zero")(mod))
        if self.prepack:  # the weights' buffers: a schedule may choose their layout (RewriteLayout)
            mod = relax.transform.AttachAttrLayoutFreeBuffers()(mod)
        tasks = [t for t in ms.relax_integration.extract_tasks(mod, target) if _tunable(t)]
        db = self.database
        report.workloads = len(tasks)
        unseen = [t for t in tasks if not self._has_record(db, t, target)]
        by_seed = {id(t): self._seed_of(t, target) for t in unseen} if self.seeds else {}
        used = [seed for seed in by_seed.values() if seed is not None]
        unseen = [t for t in unseen if by_seed.get(id(t)) is None]
        report.from_database = len(tasks) - len(unseen)
        if unseen and self.mode == "tune" and self._left_s() > 0:
            t0 = time.perf_counter()
            # one writer at a time, on the files as they are now (see database_lock): another
            # process may have tuned some of these meanwhile
            with database_lock(self.database_path, exclusive=True):
                waited = time.perf_counter() - t0
                self._db = db = open_database(self.profile, locked=True)
                theirs = [t for t in unseen if self._has_record(db, t, target)]
                unseen = [t for t in unseen if t not in theirs]
                report.from_database += len(theirs)
                if unseen:
                    self._tune(unseen, target, db, report)
            report.waited_s = waited
            report.seconds = time.perf_counter() - t0 - waited
            tuned = [t for t in unseen if self._has_record(db, t, target)]
            report.tuned = len(tuned)
            report.names = [t.task_name for t in tuned]
            unseen = [t for t in unseen if t not in tuned]
        report.untuned = len(unseen)
        # a workload the machine's own database holds: its record, or a seed's made on this CPU
        # model that was timed faster (a 16-trial tuning during a study would otherwise hide a
        # better schedule shipped later); seeds of other CPU models only for the rest, in order
        # (their timings do not compare with this machine's)
        mine, others = self._seeds_by_cpu()
        if mine:
            faster = [seed for t in tasks if t not in unseen and self._has_record(db, t, target)
                      and (seed := self._faster_seed(t, target, mine)) is not None]
            used += faster  # counted among the shipped schedules (``from_database`` counts both)
        report.from_seed = len(used)
        report.seed_note = self.seed_note(list({id(s): s for s in used}.values()))
        first = ms.database.UnionDatabase(db, *(sdb for _, sdb in mine)) if mine else db
        every = ms.database.OrderedUnionDatabase(first, *(sdb for _, sdb in others)) if others else first
        with target, every:
            mod = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)
        if self.prepack:
            mod = lift_weight_layouts(mod)
        self.report.merge(report)
        return mod, report

    @staticmethod
    def _has_record(db, task, target) -> bool:
        mod = task.dispatched[0]
        return db.has_workload(mod) and db.query_tuning_record(mod, target, task.task_name) is not None

    def _tune(self, tasks, target, db, report: TuneReport) -> None:
        import os

        from tvm.s_tir import meta_schedule as ms

        with tempfile.TemporaryDirectory(prefix="vitune-tune-") as work:
            # the evolutionary search's population scaled to the trial budget (its defaults are
            # sized for thousands of trials and cost minutes per task on two cores)
            t = self.trials_per_task
            strategy = ms.search_strategy.EvolutionarySearch(
                population_size=min(512, max(64, 8 * t)), init_min_unmeasured=min(50, max(8, 2 * t)), genetic_num_iters=3
            )
            # the search runs on this machine, whatever the device's core count
            threads = max(1, min(self.profile.threads, os.cpu_count() or 1))
            _drop_unnamed_handlers()
            contexts, weights = _tune_contexts(tasks, work, strategy, threads)
            builder, runner = self.builder_runner(work)
            worker = self.worker
            before = (worker.stats.stopped, worker.stats.crashed)
            _quiet()  # the console handler MetaSchedule installs takes the package logger's level
            try:
                ms.tune.tune_tasks(
                    tasks=contexts,
                    task_weights=weights,
                    work_dir=work,
                    # trials_per_task for each workload (see the module doc on the scheduler)
                    max_trials_global=t * len(tasks),
                    max_trials_per_task=t,
                    num_trials_per_iter=min(16, t),
                    builder=builder,
                    runner=runner,
                    database=db,
                    cost_model="xgb",
                    # no RemoveBuildArtifact: in-process artifacts are not files; the remote
                    # runner removes its libraries itself
                    measure_callbacks=[ms.measure_callback.AddToDatabase(), ms.measure_callback.UpdateCostModel()],
                    task_scheduler="round-robin",
                )
            finally:
                getattr(runner, "close", lambda: None)()  # give a tracker's device back
            failures = dict(runner.failures)
            for error, n in builder.failures.items():
                failures[error] = failures.get(error, 0) + n
            commonest = max(failures, key=failures.get) if failures else ""
            if failures and not runner.measured:
                logging.getLogger(__name__).warning("tuning %s: no candidate ran (%s)", self.profile.name, commonest)
            report.trials, report.failed, report.error = runner.measured, sum(failures.values()), commonest
            report.stopped = worker.stats.stopped - before[0]
            report.crashed = worker.stats.crashed - before[1]
            if report.stopped or report.crashed:
                report.failures_log = str(worker.log.path) if worker.log is not None else "the worker's stderr"
                logging.getLogger(__name__).warning(
                    "tuning %s: %d candidates stopped past their deadline, %d crashed the worker; full reasons in %s",
                    self.profile.name, report.stopped, report.crashed, report.failures_log,
                )

    def builder_runner(self, work: str, repeat: int = 1):
        """MetaSchedule's builder and runner for this target: candidates built and timed in the
        candidate worker for a device of this machine; built there and timed over RPC for a device
        reached over RPC (cross-compiled with the profile's compiler). ``repeat``: timings per run."""
        from vitune.targets.msworker import WorkerBuilder, WorkerRunner

        kind = self.profile.runner
        if kind == "rpc":
            from vitune.targets.compile import link_options
            from vitune.targets.msremote import RemoteRunner

            link_options(self.profile)  # a missing cross compiler fails here, once
            return WorkerBuilder(self.worker, work, self.profile.cross_compiler), RemoteRunner(self.profile, repeat=repeat)
        if kind == "local" and self.profile.is_native:
            return WorkerBuilder(self.worker), WorkerRunner(self.worker, repeat=repeat, threads=self.profile.threads)
        if kind == "local":
            raise RuntimeError(
                f"tuning target {self.profile.name} needs its device: this machine cannot run "
                f"{self.profile.tvm_target.get('mtriple')} code; give the target an rpc runner"
            )
        raise RuntimeError(f"tuning target {self.profile.name}: runner kind {kind!r} cannot tune (local and rpc runners can)")

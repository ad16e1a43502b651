"""Shipped schedules: tuned records that travel with vitune, so a fresh machine starts tuned.

Tuning a model's kernels costs minutes per model on a small CPU (about 6 s per workload at 16
trials on two cores; the quickstart's space meets a few hundred workloads). A *seed* is the best
tuning record of each workload of a tuning database, written to one file
(``vitune tune TARGET --export-seed FILE``), like TVM's former TopHub packages. A tuner reads the
seeds that fit its target beside its own database (:class:`~vitune.targets.tuning.Tuner`): a
workload found in neither is tuned as before, into the machine's own database; one found in a
seed is built with the seed's schedule and counted apart in the tuning report; one found in both
is built with the machine's record, unless a seed made on this CPU model recorded a faster run
(times taken on one CPU model compare; another model's seed never overrides the machine's own).

Where seeds come from: ``vitune/targets/seeds/*.json.gz`` (shipped with the package) and
``$VITUNE_SEEDS_DIR`` (default ``~/.config/vitune/seeds``) for a team's own. ``VITUNE_SEEDS=0``
turns them off.

A seed fits a target when it was made with the same TVM, the same kernel runtime
(:data:`~vitune.targets.profile.TIMING_RUNTIME`), the same thread count and the same TVM target
up to its ``mcpu`` (a schedule is loop tiling, vectorisation and parallelism: it builds and runs
on any CPU of the architecture, and fits best the CPU it was timed on). A seed made on another
CPU model is used and said so (``tuned on znver5``): run ``vitune tune`` to tune on this one.

File format: gzip JSON ``{"vitune_seed": 1, "meta": {...}, "workloads": [...], "records": [...]}``,
where ``workloads`` and ``records`` are the lines of MetaSchedule's ``JSONDatabase`` files.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitune.errors import ConfigError
from vitune.paths import cache_dir
from vitune.targets.host import cpu_model

FORMAT = 1
SHIPPED_DIR = Path(__file__).parent / "seeds"
_META_KEYS = ("tvm", "runtime", "target", "threads", "machine", "cpu", "made", "note")


def user_seed_dir() -> Path:
    env = os.environ.get("VITUNE_SEEDS_DIR")
    return Path(env) if env else Path.home() / ".config" / "vitune" / "seeds"


def enabled() -> bool:
    return os.environ.get("VITUNE_SEEDS", "1").strip().lower() not in ("0", "false", "no", "off")


@dataclass(frozen=True)
class SeedMeta:
    tvm: str
    runtime: int
    target: dict[str, Any]  # the TVM target the records were tuned for
    threads: int
    machine: str  # platform.machine() of the tuning host
    cpu: str  # the CPU model, for people
    made: str  # date
    note: str  # how it was made (study, trials per workload)

    @property
    def mcpu(self) -> str:
        return str(self.target.get("mcpu", "")) or self.machine


@dataclass(frozen=True)
class Seed:
    path: Path
    meta: SeedMeta
    workloads: int
    sha256: str

    def fit(self, profile) -> str | None:
        """``None`` when the seed does not fit ``profile``; else ``"exact"`` or ``"other-cpu"``."""
        from vitune.targets.profile import TIMING_RUNTIME
        from vitune.versions import versions

        m = self.meta
        if m.tvm != versions()["tvm"] or m.runtime != TIMING_RUNTIME or m.threads != profile.threads:
            return None
        if _loose(m.target) != _loose(profile.tvm_target):
            return None
        if "mtriple" not in profile.tvm_target and m.machine != platform.machine():  # the host's own architecture
            return None
        return "exact" if str(m.target.get("mcpu", "")) == str(profile.tvm_target.get("mcpu", "")) else "other-cpu"

    def label(self, profile) -> str:
        where = "this CPU model" if self.fit(profile) == "exact" else f"{self.meta.mcpu}, not this CPU"
        return f"shipped schedules from {self.path.name} (tuned on {where})"


def _loose(target: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in target.items() if k not in ("mcpu", "num-cores", "tag")}


def read_seed(path: Path) -> tuple[Seed, list, list]:
    """Read and check a seed file: ``(seed, workload lines, record lines)``; a bad file is a
    :class:`ConfigError` naming it and what is wrong."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        data = json.loads(gzip.decompress(raw))
    except (OSError, EOFError, ValueError) as err:
        raise ConfigError(f"{path}: not a vitune seed file (gzip JSON): {err}") from None
    if not isinstance(data, dict) or data.get("vitune_seed") != FORMAT:
        raise ConfigError(f"{path}: not a vitune seed file of format {FORMAT} (key 'vitune_seed')")
    meta = data.get("meta")
    if not isinstance(meta, dict) or any(k not in meta for k in _META_KEYS):
        missing = [k for k in _META_KEYS if not isinstance(meta, dict) or k not in meta]
        raise ConfigError(f"{path}: table 'meta' lacks key(s) {', '.join(missing)}")
    workloads, records = data.get("workloads"), data.get("records")
    if not isinstance(workloads, list) or not isinstance(records, list):
        raise ConfigError(f"{path}: keys 'workloads' and 'records' must be lists")
    for i, rec in enumerate(records):
        if not (isinstance(rec, list) and len(rec) == 2 and isinstance(rec[0], int) and 0 <= rec[0] < len(workloads)):
            raise ConfigError(f"{path}: records[{i}] does not name one of the {len(workloads)} workloads")
    try:
        sm = SeedMeta(tvm=str(meta["tvm"]), runtime=int(meta["runtime"]), target=dict(meta["target"]), threads=int(meta["threads"]),
                      machine=str(meta["machine"]), cpu=str(meta["cpu"]), made=str(meta["made"]), note=str(meta["note"]))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{path}: table 'meta': {err}") from None
    return Seed(path, sm, len(workloads), hashlib.sha256(raw).hexdigest()), workloads, records


_READ: dict[tuple[str, int, int], Seed] = {}  # (path, mtime, size) -> the seed: each file read once per process


def _seed_at(path: Path) -> Seed:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if key not in _READ:
        _READ[key] = read_seed(path)[0]
    return _READ[key]


# vector ISA extensions that change which schedule (tile widths, int8 instructions) suits a CPU
SCHEDULE_FEATURES = ("avx2", "avx512f", "avx512bw", "avx512vnni", "avxvnni", "neon", "dotprod", "i8mm", "sve")


def isa_features(target: dict[str, Any]) -> frozenset[str]:
    """Which of :data:`SCHEDULE_FEATURES` LLVM gives the TVM target ``target`` (a dict); empty
    when LLVM cannot say (another LLVM build, a non-LLVM target)."""
    try:
        from tvm.target import Target, codegen

        t = Target(target)
        return frozenset(f for f in SCHEDULE_FEATURES if codegen.target_has_features(f, t))
    except Exception:
        return frozenset()


def find_seeds(profile) -> list[Seed]:
    """The seeds that fit ``profile``: those made on this CPU model first, then those of other
    CPU models with the same vector width (AVX-512 or not: an AVX-512 CPU takes another AVX-512
    CPU's schedules before an AVX2 one's), then by how many vector extensions
    (:data:`SCHEDULE_FEATURES`) they differ in; the first seed with a record of a workload
    builds it."""
    if not enabled():
        return []
    fits = []
    for folder in (user_seed_dir(), SHIPPED_DIR):
        for path in sorted(folder.glob("*.json.gz")) if folder.is_dir() else []:
            seed = _seed_at(path)
            fit = seed.fit(profile)
            if fit is not None:
                fits.append((fit != "exact", seed))
    # LLVM is asked only when two seeds of other CPU models compete
    mine = isa_features(profile.tvm_target) if sum(other for other, _ in fits) > 1 else None

    def rank(item: tuple[bool, Seed]) -> tuple[bool, bool, int]:
        other, seed = item
        if not other or mine is None:
            return other, False, 0
        theirs = isa_features(seed.meta.target)
        return True, ("avx512f" in mine) != ("avx512f" in theirs), len(mine ^ theirs)

    return [seed for _, seed in sorted(fits, key=rank)]


_OPEN: dict[str, Any] = {}  # seed file hash -> its database, read once per process


def open_seed(seed: Seed):
    """The seed as a read-only MetaSchedule database (its files unpacked once into the cache,
    keyed by the seed file's hash; read once per process)."""
    from vitune.targets.tuning import json_database

    if seed.sha256 in _OPEN:
        return _OPEN[seed.sha256]
    folder = cache_dir() / "tuning" / "seeds" / seed.sha256[:16]
    if not (folder / "records.json").exists():
        _, workloads, records = read_seed(seed.path)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / "records.json.part"
        (folder / "workloads.json").write_text("".join(json.dumps(w) + "\n" for w in workloads))
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
        tmp.replace(folder / "records.json")  # last: a half-unpacked seed is unpacked again
    _OPEN[seed.sha256] = json_database(folder, allow_missing=False)
    return _OPEN[seed.sha256]


def mean_run_s(record: list) -> float:
    """The mean run time of a records.json line (``[workload index, [trace, run_secs, ...]]``);
    infinite for a failed or untimed one."""
    run_secs = record[1][1] if len(record[1]) > 1 else None
    times = [float(x) for x in run_secs or [] if isinstance(x, (int, float))]
    good = [t for t in times if math.isfinite(t) and 0 < t < 1e9]  # MetaSchedule writes 1e10 for a failed run
    return sum(good) / len(good) if good and len(good) == len(times) else math.inf


def json_lines(path: Path) -> list:
    """The lines of a MetaSchedule JSON database file (``workloads.json``, ``records.json``),
    parsed; none where the file does not exist."""
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def best_records(record_lines: list) -> dict[int, list]:
    """``{workload index: its timed record of lowest mean run time}`` of a database's (or a seed
    file's) record lines."""
    best: dict[int, list] = {}
    for rec in record_lines:
        if mean_run_s(rec) < (mean_run_s(best[rec[0]]) if rec[0] in best else math.inf):
            best[rec[0]] = rec
    return best


def export_seed(database: Path, out: Path, profile, note: str = "", merge: Path | None = None) -> int:
    """Write the best record of each workload of the tuning database folder ``database`` (for
    ``profile``) to the seed file ``out``; returns how many workloads it holds.

    ``merge``: a seed file made for this target on this CPU model whose workloads are kept too
    (a workload in both keeps the faster record: both were timed on this CPU model), so a seed
    grows by what a machine tuned beside it (a study's tuner tunes only what its seeds lack).
    A seed of another target or CPU model is refused: its times do not compare."""
    import datetime

    from vitune.targets.profile import TIMING_RUNTIME
    from vitune.versions import versions

    workloads = json_lines(database / "workloads.json")
    best = best_records(json_lines(database / "records.json"))
    if not best and merge is None:
        raise ConfigError(f"{database}: the tuning database has no timed records to export")
    keep = sorted(best)
    lines = [workloads[i] for i in keep]
    records = [[n, best[i][1]] for n, i in enumerate(keep)]
    if merge is not None:
        seed, seed_workloads, seed_records = read_seed(merge)
        if seed.fit(profile) != "exact":
            raise ConfigError(f"{merge}: made for another target or CPU model ({seed.meta.mcpu}, {seed.meta.threads} threads, "
                              f"TVM {seed.meta.tvm}) than {profile.name} here: its records' times do not compare; not merged")
        at = {json.dumps(w, sort_keys=True): n for n, w in enumerate(lines)}
        for i, rec in best_records(seed_records).items():
            key = json.dumps(seed_workloads[i], sort_keys=True)
            if key not in at:
                at[key] = len(lines)
                lines.append(seed_workloads[i])
                records.append([at[key], rec[1]])
            elif mean_run_s(rec) < mean_run_s(records[at[key]]):
                records[at[key]] = [at[key], rec[1]]
    meta = {"tvm": versions()["tvm"], "runtime": TIMING_RUNTIME, "target": dict(profile.tvm_target), "threads": profile.threads,
            "machine": platform.machine(), "cpu": cpu_model(), "made": datetime.date.today().isoformat(), "note": note}
    data = {"vitune_seed": FORMAT, "meta": meta, "workloads": lines, "records": records}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(gzip.compress(json.dumps(data, separators=(",", ":")).encode(), compresslevel=9, mtime=0))
    return len(lines)

"""Search quality with statistics: vitune's search against the baselines users would try first,
the same trial budget each, several seeds, on the latency that ships.

On the study file's model and target (default: the quickstart, i.e. ``digits_vit_base`` on this
CPU, latency of the tuned TVM build ``apply`` ships, drift-corrected), every method gets
``--trials`` candidate evaluations per seed, ``--seeds`` times:

* ``vitune`` — the study file's sampler with warm start (sensitivity sweep), front refinement
  (:mod:`vitune.search.refine`) and early stopping;
* ``no-refine`` — ``vitune`` without front refinement (``[search] refine_front = false``);
* ``nsga2`` — ``vitune`` with Optuna's NSGA-II sampler;
* ``evolution`` — ``vitune`` with vitune's evolution sampler (children of the front, one to three
  layers moved to a neighbouring option);
* ``random`` — Optuna's RandomSampler, no warm start, no early stopping;
* ``uniform`` — the same option on every layer: a seeded draw of the grid of the menu's levels;
* ``greedy`` — the seeds' hardware-blind greedy rank allocation (``vitune compress --strategy
  greedy-rank``) at evenly spaced parameter budgets;
* ``sensitivity`` — HAQ / Neural Compressor style mixed precision: per-layer sensitivity from the
  warm-start sweep (each option alone, its accuracy drop), then the least sensitive options taken
  first until the estimated latency meets a budget, one configuration per budget spread from the
  uncompressed latency down to the fastest the options allow.

Every candidate goes through vitune's evaluator (compression, validated accuracy, the tuned build
timed), and results are shared through vitune's result cache: one configuration has one latency in
every method and seed (the deterministic methods are therefore timed once, not re-timed per seed).
That alone does not take timing noise out of the ranking: near-identical configurations are timed
once each, and a method that proposes more of them near the front draws more low timings (a
winner's curse; stop 37 saw one shape recorded from 0.26 to 0.40 ms). So at the end, every
configuration on or near any run's front (``--retime-margin``: no point beats it by more than that
fraction of latency at the same accuracy) is built again as ``apply`` ships it and timed with the
uncompressed build and the baseline runtimes side by side in ``--retime-rounds`` interleaved
rounds; the figures use those latencies (``points``; the trials' own in ``points_recorded``). The
validation split has ``--val-copies`` copies of each image (``[data] val_copies``; 2 gives 538
digits, 0.19 points per image).

Reference: the uncompressed model in the best runtime this machine has (the faster of ONNX Runtime
and OpenVINO; ``--reference onnxruntime`` picks a named peer instead, labelled, with the fastest
still shown, for a model whose candidates all run slower than the fastest runtime; ``--reference
tvm`` vitune's own uncompressed tuned build, only a box to compare the methods in, where every
peer is faster than every candidate), timed in the end's interleaved rounds beside vitune's uncompressed build and the
fronts (and, for the figures written while the run goes on, at the start); the latencies are
expressed at the speed of the uncompressed build's cached, drift-corrected timing, by their ratio
to it in the same rounds. Per method, over seeds: the median and inter-quartile range of
the front's hypervolume (accuracy above ``--floor`` × the uncompressed accuracy, latency below the
reference's), the best validated accuracy at 2×, 2.5×, 3× and 5× the reference's speed (median), and the
trials needed to reach 95 % of the best hypervolume any run found (median; null where most seeds
never reach it). ``--json`` writes it all (keys ``methods`` → name → ``hypervolume`` {``median``,
``iqr``}, ``acc_at`` {``2x``, ``3x``, ``5x``}, ``trials_to_95``); ``--plot`` draws each method's
median front (best accuracy within a latency) with its inter-quartile band.

The builds take their kernels from the machine's tuning database and the shipped seeds
(:mod:`vitune.targets.tuning`: the machine's own record of a workload unless a seed of this CPU
model recorded a faster run; other CPU models' seeds only for what neither holds), so on a
machine that has tuned before the landscape carries that machine's history. For the figures a
user gets after installing, run it with a fresh cache directory, ``VITUNE_CACHE_DIR=/some/new/dir`` (the seeds only, plus what the run
itself tunes); the JSON records which (``cache``), and a resumed run must keep it.

    python bench/search.py [--study studies/quickstart.toml] [--trials 100] [--seeds 3] [--json F] [--plot F]
    python bench/search.py --from-json F [--json F2] [--plot F.png]   # figures again from a run's points
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import itertools
import json
import math
import random
import signal
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("vitune", "no-refine", "nsga2", "evolution", "random", "uniform", "greedy", "sensitivity")
BASELINES = ("random", "uniform", "greedy", "sensitivity")  # what users would try first; the others are vitune's variants
SPEEDS = (2, 2.5, 3, 5)  # accuracy at these multiples of the reference's speed


# --- figures of one run: its points in the order they were evaluated (None: stopped or failed) ---

def pareto(points):
    """Non-dominated (accuracy, latency_ms) points, fastest first."""
    out = []
    for a, lat in sorted((p for p in points if p is not None), key=lambda p: (p[1], -p[0])):
        if not out or a > out[-1][0]:
            out.append((a, lat))
    return out


def best_at(points, max_ms: float):
    ok = [a for a, lat in (p for p in points if p is not None) if lat <= max_ms]
    return max(ok) if ok else None


def hypervolume(points, ref_acc: float, ref_ms: float) -> float:
    from vitune.search.front import hypervolume as hv

    return hv([p for p in points if p is not None], ref_acc, ref_ms)


def hv_curve(points, ref_acc: float, ref_ms: float) -> list[float]:
    """The hypervolume after each evaluation."""
    return [hypervolume(points[: i + 1], ref_acc, ref_ms) for i in range(len(points))]


def trials_to(curve: list[float], target: float) -> int | None:
    """1-based count of evaluations until ``curve`` reaches ``target`` (None: never)."""
    return next((i + 1 for i, v in enumerate(curve) if v >= target - 1e-15), None)


def median_or_none(values, missing=-math.inf):
    """Median with None counted as ``missing`` (worst); None when the median is missing."""
    m = statistics.median(missing if v is None else v for v in values)
    return None if m == missing else m


def quartiles(values) -> tuple[float, float, float]:
    xs = sorted(values)
    if len(xs) == 1:
        return xs[0], xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], q[1], q[2]


def attainment(points, grid):
    """Best accuracy within each latency of ``grid`` (None: nothing that fast)."""
    return [best_at(points, ms) for ms in grid]


def summarise(runs: dict[str, list[list]], ref_acc: float, ref_ms: float) -> dict:
    """Per method, the figures over its seeds' runs (each a list of points in evaluation order)."""
    curves = {m: [hv_curve(pts, ref_acc, ref_ms) for pts in rs] for m, rs in runs.items()}
    best = max((c[-1] for cs in curves.values() for c in cs if c), default=0.0)
    out = {}
    for method, rs in runs.items():
        finals = [c[-1] if c else 0.0 for c in curves[method]]
        q1, med, q3 = quartiles(finals)
        reach = [trials_to(c, 0.95 * best) if best > 0 else None for c in curves[method]]
        out[method] = {
            "hypervolume": {"median": med, "iqr": q3 - q1, "q25": q1, "q75": q3, "values": finals},
            "acc_at": {f"{k:g}x": median_or_none([best_at(p, ref_ms / k) for p in rs]) for k in SPEEDS},
            "acc_at_values": {f"{k:g}x": [best_at(p, ref_ms / k) for p in rs] for k in SPEEDS},
            "trials_to_95": median_or_none(reach, missing=math.inf),
            "trials_to_95_values": reach,
            "evaluated": [len(p) for p in rs],
            "stopped_or_failed": [sum(x is None for x in p) for p in rs],
        }
    hv_random = out.get("random", {}).get("hypervolume", {}).get("median")
    for row in out.values():
        row["hypervolume_vs_random"] = row["hypervolume"]["median"] / hv_random if hv_random else None
    return {"best_hypervolume": best, "methods": out}


# --- the fronts timed again at the end, side by side ------------------------------------------

def near_front(points, margin: float) -> list[int]:
    """Indices of the complete points that no other point beats by more than ``margin`` (a
    fraction of latency) at the same or better accuracy: the front, and what one unlucky timing
    could have kept off it."""
    pts = [(i, p) for i, p in enumerate(points) if p is not None]
    return [i for i, (a, lat) in pts if not any(b >= a and k * (1 + margin) < lat for _, (b, k) in pts)]


def front_keys(runs: dict[str, list[list]], keys: dict[str, list[list]], margin: float) -> list[str]:
    """The configurations near any run's front (:func:`near_front`), each once, in first-seen order."""
    out: dict[str, None] = {}
    for method, rs in runs.items():
        for points, ks in zip(rs, keys[method]):
            out.update((ks[i], None) for i in near_front(points, margin) if ks[i] is not None)
    return list(out)


def retimed(runs: dict[str, list[list]], keys: dict[str, list[list]], latency: dict[str, float]) -> dict[str, list[list]]:
    """``runs`` with every point whose configuration was timed again (``latency``, by key) at that latency."""
    return {m: [[(p[0], latency[k]) if p is not None and k in latency else p for p, k in zip(points, ks)]
                 for points, ks in zip(rs, keys[m])] for m, rs in runs.items()}


def time_fronts(ws, profile, evaluator, configs: dict, identity_key: str, identity_ms: float, rounds: int,
                reference: str = "best") -> dict:
    """Every configuration of ``configs`` (key → configuration; the uncompressed one among them
    as ``identity_key``) built as ``vitune apply`` ships it (tuned kernels from the target's
    database) and timed with the target's baseline runtimes side by side, in ``rounds``
    interleaved rounds, so that one slow or lucky timing during a study no longer ranks the
    fronts. Latencies are given in the candidates' units: the ratio to the uncompressed build in
    the same rounds times ``identity_ms`` (its latency in the results cache); so is the
    reference (:func:`reference_of`)."""
    from vitune.search.remeasure import build_as_shipped
    from vitune.targets.peers import OTHER, build_label, measure_baseline

    example = ws.example_input(1)
    # a configuration that no longer builds keeps its recorded latency
    builds, errors = build_as_shipped(evaluator, configs, example, profile, progress=True)
    labels = {k: build_label(b) for k, b in builds.items()}
    t0 = time.perf_counter()
    base = measure_baseline(ws.model, example, profile, rounds=rounds, others=builds)
    errors.update({k.removeprefix(OTHER): v for k, v in base.errors.items()})
    uncompressed = base.others_ms.get(identity_key)
    if not uncompressed or not base.latency_ms:
        raise SystemExit(f"the fronts could not be timed side by side: {base.line()}; {errors}")
    scale = identity_ms / uncompressed
    return {"rounds": base.rounds, "configs": len(configs), "timing_s": time.perf_counter() - t0,
            **reference_figures(base, reference, identity_key, scale),
            "peers_ms": base.peers_ms, "errors": errors,
            "untuned": sorted(k for k, v in labels.items() if "untuned" in v),
            "timed": dict(base.others_ms),
            "retimed_ms": {k: v * scale for k, v in base.others_ms.items()}}


# --- a run that spans invocations --------------------------------------------------------------

LEDGER = "ledger.json"


@dataclasses.dataclass
class Ledger:
    """What the bench's studies in one ``--out-dir`` were measured on and how long each method
    and seed took over every invocation that worked on them (a 100 × 3 run takes hours and is
    resumed; the time one invocation spends re-reading finished studies is not their cost).

    Resuming on another machine (its :func:`~vitune.targets.host.describe` differs) or with
    another study file, trial budget, validation split, cache directory (``VITUNE_CACHE_DIR``:
    its tuning database is half of what a build runs) or vitune code (a later seed would run
    another search, or build otherwise) is refused: the studies' early trials were drawn on the
    first landscape, and the figures would mix two. To resume after the code moved on, run the
    bench from a checkout of the commit it started on (``git worktree add``)."""

    path: Path
    host: dict
    inputs: dict
    spent: dict
    _since: float | None = None
    _current: str | None = None

    @classmethod
    def open(cls, out_dir: Path, host: dict, inputs: dict) -> "Ledger":
        path = out_dir / LEDGER
        if path.exists():
            try:
                doc = json.loads(path.read_text())
                old_host, old_inputs, spent = doc["host"], doc["inputs"], {k: float(v) for k, v in doc["seconds"].items()}
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
                raise SystemExit(f"{path}: not a bench ledger ({e}); --restart starts the run over") from None
            if old_host != host:
                raise SystemExit(f"{path}: these studies were measured on {old_host}, this machine is {host}: a run cannot be "
                                 "resumed on another machine (--restart, or another --out-dir)")
            if old_inputs != inputs:
                raise SystemExit(f"{path}: these studies were run with {old_inputs}, not {inputs} (--restart, or another --out-dir)")
            ledger = cls(path, host, inputs, spent)
        else:
            ledger = cls(path, host, inputs, {})
        atexit.register(ledger.stop)  # a run stopped by Ctrl-C (or SIGTERM: main) keeps the time it spent
        ledger.save()
        return ledger

    def start(self, method: str, seed: int) -> None:
        self.stop()
        self._current, self._since = f"{method}-s{seed}", time.perf_counter()

    def _now(self) -> dict[str, float]:
        """Per method and seed: the time spent over every invocation, the current one's included."""
        now = dict(self.spent)
        if self._current is not None and self._since is not None:
            now[self._current] = now.get(self._current, 0.0) + time.perf_counter() - self._since
        return now

    def stop(self) -> None:
        if self._current is not None:
            self.spent = self._now()
            self._current = self._since = None
            self.save()

    def seconds(self) -> dict[str, float]:
        """Per method: its seeds' time over every invocation, plus what the current one has spent."""
        now = self._now()
        out: dict[str, float] = {}
        for key, v in now.items():
            method = key.rsplit("-s", 1)[0]
            out[method] = out.get(method, 0.0) + v
        return out

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"host": self.host, "inputs": self.inputs, "seconds": self.spent}, indent=1))
        tmp.replace(self.path)


# --- the methods -----------------------------------------------------------------------------

def study_points(spec, evaluator=None) -> list:
    """The study's trials in order: ((accuracy, latency), configuration) for a complete one,
    (None, None) otherwise.

    With ``evaluator`` (the bench's, sharing the results cache), each complete trial's
    configuration is read through it: a cache hit where this run (or this code, on this target)
    measured it, a measurement now where the study recorded it in an earlier run (resumed, with
    other code or on another day). So a configuration has one latency in every method and seed of
    a run, resumed studies included; without it, the values the study recorded."""
    import optuna

    from vitune.search.front import accuracy_of, latency_of
    from vitune.search.study import open_study, trial_config

    study = open_study(spec, create=False)
    out: list = []
    for t in sorted(study.trials, key=lambda t: t.number):
        if t.state != optuna.trial.TrialState.COMPLETE:
            out.append((None, None))
            continue
        config = trial_config(t)
        if evaluator is None or config is None:
            out.append(((accuracy_of(t), latency_of(t)), config))
            continue
        r = evaluator.evaluate(config)
        out.append(((r.metrics.accuracy, r.metrics.latency_ms), config) if r.ok else (None, None))
    return out


def run_search(base, name: str, seed: int, trials: int, sampler: str, warm: bool, out_dir: Path, evaluator=None,
               refine: bool = True) -> list:
    from vitune.search.study import run_study
    from vitune.search.studyfile import SearchSpec

    search = base.search if warm else dataclasses.replace(SearchSpec(), warm_start=False, min_fidelity=0.0, accuracy_shards=1)
    search = search if refine else dataclasses.replace(search, refine_front=False)
    spec = dataclasses.replace(base, name=f"bench-{name}-s{seed}", storage=f"sqlite:///{out_dir / f'{name}-s{seed}.db'}",
                               n_trials=trials, sampler=sampler, seed=base.seed + seed, search=search, timeout_s=0.0)
    if run_study(spec, progress=True, log=lambda *_: None).interrupted:
        # Ctrl-C or SIGTERM stopped the study after its current trial: stop the bench too (its
        # studies and the results cache keep what was measured; the next run resumes them)
        raise KeyboardInterrupt
    return study_points(spec, evaluator)[:trials]


def evaluate_all(evaluator, configs, label: str) -> list:
    """Each configuration evaluated, in order: (point, configuration) as :func:`study_points`."""
    from tqdm.auto import tqdm

    out: list = []
    for config in tqdm(configs, desc=label, unit="config"):
        r = evaluator.evaluate(config)
        out.append(((r.metrics.accuracy, r.metrics.latency_ms), config) if r.ok else (None, None))
    return out


def uniform_configs(space, trials: int, seed: int = 0):
    """A seeded draw of ``trials`` grid points (one level per knob on every layer that allows it)."""
    from vitune.search.warmstart import knob_levels, uniform_assignment

    levels = knob_levels(space)
    grid = []
    for combo in itertools.product(*levels.values()):
        params = uniform_assignment(space, dict(zip(levels, combo)))
        if params not in grid and params != space.identity_params():
            grid.append(params)
    grid = random.Random(seed).sample(grid, min(trials, len(grid)))
    return [space.to_config(p) for p in grid]


def greedy_configs(ws, layout, methods, trials: int):
    """The greedy rank allocation at ``trials`` parameter budgets from 0.1 to 1.0 (distinct ones)."""
    from vitune.compression.allocate import allocate
    from vitune.compression.calibrate import Calibration

    calib = Calibration.from_dataset(ws.data.calib, methods.calib_images)
    out = []
    for i in range(trials):
        budget = round(0.1 + 0.9 * i / max(1, trials - 1), 3)
        config = allocate("greedy-rank", ws.model, layout, calib.x, budget, methods)
        if config.key not in {c.key for c in out}:
            out.append(config)
    return out


def sensitivity_params(space, sweep: dict, trials: int) -> list[dict]:
    """The least-sensitive-first walk (:func:`vitune.search.warmstart.latency_walk`) stopped at
    ``trials`` evenly spaced shares of its whole estimated saving (distinct configurations)."""
    from vitune.search.warmstart import walked_densely

    return [p for p, _ in reversed(walked_densely(space, sweep, trials))]  # the slowest first


TVM_REFERENCE = "vitune's uncompressed build (tuned): a box to compare search methods in, not a speed-up reference"


def reference_of(base, which: str, tvm_key: str = "tvm") -> tuple[str, str, float]:
    """``(runtime, label, latency_ms)`` of the figures' reference in ``base`` (a
    :class:`~vitune.targets.peers.Baseline`): the fastest runtime timed (``"best"``, what a
    speed-up is against), the named peer (e.g. ``"onnxruntime"``, where no candidate of the
    space comes near the fastest and the hypervolume's box would be empty), or ``"tvm"``:
    vitune's own uncompressed build timed in the same rounds (``others_ms[tvm_key]``), for
    comparing search methods where every peer is faster than every candidate; labelled so."""
    if which == "best":
        return base.runtime, base.label, base.latency_ms
    if which == "tvm":
        return "tvm", TVM_REFERENCE, base.others_ms[tvm_key]
    if which not in base.peers_ms:
        raise SystemExit(f"--reference {which}: not timed on this target (timed: {', '.join(base.peers_ms) or 'none'}; {base.errors})")
    return which, base.peer_labels.get(which, which), base.peers_ms[which]


def reference_figures(base, which: str, tvm_key: str, scale: float) -> dict:
    """The reference's entries of a run's JSON from ``base``: :func:`reference_of`'s runtime,
    label and latency (``timed_ms`` as timed, ``latency_ms`` times ``scale``: in the candidates'
    units), its ratio to vitune's uncompressed build (``others_ms[tvm_key]``) in the same rounds,
    and the fastest runtime, in the same units."""
    runtime, label, ref_ms = reference_of(base, which, tvm_key)
    tvm_ms = base.others_ms[tvm_key]
    return {"runtime": runtime, "label": label, "latency_ms": ref_ms * scale, "timed_ms": ref_ms, "tvm_uncompressed_ms": tvm_ms,
            "ratio_to_tvm": ref_ms / tvm_ms,
            "fastest": {"runtime": base.runtime, "label": base.label, "latency_ms": base.latency_ms * scale, "timed_ms": base.latency_ms}}


def time_reference(ws, profile, tuner, identity_ms: float, rounds: int = 7, reference: str = "best") -> dict:
    """The uncompressed model in the best runtime this target has, in the candidates' units.

    The peers are timed in interleaved rounds beside vitune's uncompressed build; their ratio to
    it is robust to the machine's slow windows, and it scales the uncompressed build's fastest
    timing (the speed the candidates' drift-corrected latencies are expressed at)."""
    from vitune.targets.compile import compile_model
    from vitune.targets.peers import measure_baseline

    example = ws.example_input(1)
    built = compile_model(ws.model, example, profile, tuner)
    base = measure_baseline(ws.model, example, profile, rounds=rounds, others={"tvm": built})
    tvm_ms = base.others_ms["tvm"]
    return {**base.to_dict(), **reference_figures(base, reference, "tvm", min(tvm_ms, identity_ms) / tvm_ms)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", default=str(ROOT / "studies" / "quickstart.toml"))
    ap.add_argument("--trials", type=int, default=100, help="evaluations per method and seed")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--val-copies", type=int, default=2, help="[data] val_copies of the bench (0: the study file's)")
    ap.add_argument("--floor", type=float, default=0.9, help="hypervolume's accuracy floor, a fraction of the uncompressed accuracy")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--out-dir", default=str(ROOT / "bench" / "results" / "search"), help="the studies' SQLite files")
    ap.add_argument("--restart", action="store_true", help="delete the bench's studies first (default: resume them)")
    ap.add_argument("--retime-rounds", type=int, default=7,
                    help="interleaved rounds in which every run's front is timed again at the end, side by side (0: the figures on the trials' timings)")
    ap.add_argument("--retime-margin", type=float, default=1.0,
                    help="time again every configuration no point beats by more than this fraction of latency at the same accuracy")
    ap.add_argument("--reference", default="best",
                    help="the figures' reference: the fastest runtime on the target (best: what a speed-up is against), a named "
                         "peer (onnxruntime, openvino), labelled as such, where no candidate comes near the fastest, or tvm: vitune's "
                         "uncompressed tuned build, a box to compare methods in where every peer beats every candidate (no speed-up)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--plot", default=None, help="PNG of the median fronts with inter-quartile bands (needs matplotlib)")
    ap.add_argument("--from-json", default=None, help="recompute the figures, table and plot from a run's JSON (its points), running nothing")
    args = ap.parse_args()
    if args.from_json:
        doc = json.loads(Path(args.from_json).read_text())
        ref = doc["reference_point"]
        doc.update(summarise({m: r for m, r in doc["points"].items() if r}, ref["accuracy"], ref["latency_ms"]))
        methods = list(doc["methods"])
        report(doc, methods)
        if args.json:
            Path(args.json).write_text(json.dumps(doc, indent=1))
        if args.plot:
            plot(doc, methods, args.plot)
        return
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(METHODS)}")

    from vitune.models.layers import discover
    from vitune.models.zoo import load_workspace
    from vitune.search.cache import ResultCache, data_key, target_key
    from vitune.search.evaluate import Evaluator
    from vitune.search.space import SearchSpace
    from vitune.search.study import latency_source_for
    from vitune.search.studyfile import load_study_file
    from vitune.search.warmstart import run_sweep
    from vitune.paths import cache_dir
    from vitune.targets.host import describe
    from vitune.versions import code_hash

    t_start = time.perf_counter()
    base = load_study_file(args.study)
    if args.val_copies:
        base = dataclasses.replace(base, data=dataclasses.replace(base.data, val_copies=args.val_copies))
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.restart:
        for m, s, suffix in itertools.product(methods, range(args.seeds), ("", "-wal", "-shm")):
            (out_dir / f"{m}-s{s}.db{suffix}").unlink(missing_ok=True)
        (out_dir / LEDGER).unlink(missing_ok=True)
    # a run stopped by SIGTERM (whose default action skips atexit) keeps its ledger too; a study
    # in progress installs its own handler (stop after the trial) and restores this one
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    ledger = Ledger.open(out_dir, describe(), {"study": str(Path(args.study).resolve()), "trials": args.trials, "val_copies": args.val_copies,
                                               "cache": str(cache_dir()), "code": code_hash("compression", "costmodels", "data", "models", "search", "targets")})
    ws = load_workspace(base.model, base.data)
    profile, source, tuner = latency_source_for(base, base.target, "[target]")
    layout = discover(ws.model)
    space = SearchSpace.build(base.space, layout, base.methods)
    source.bind(ws, space, base.target.tuning)
    evaluator = Evaluator(ws, profile, source, cache=ResultCache(ws.ref.checkpoint_sha256, data_key(base.data, "val"),
                                                                  target_key(profile, base.target.tuning)))
    identity_config = space.to_config(space.identity_params())
    identity = evaluator.evaluate(identity_config)
    acc0, ms0 = identity.metrics.accuracy, identity.metrics.latency_ms
    ref = time_reference(ws, profile, tuner, ms0, reference=args.reference)
    ref_ms = ref["latency_ms"]
    ref_acc = args.floor * acc0
    print(f"{base.model.name} on {profile.name}: uncompressed accuracy {acc0:.4f} on {len(ws.data.val)} validation images, "
          f"TVM {ms0:.4f} ms; reference {ref['label']} {ref_ms:.4f} ms ({ref['ratio_to_tvm']:.3f}x vitune's uncompressed build in "
          f"{ref['rounds']} interleaved rounds: {ref['timed_ms']:.4f} against {ref['tvm_uncompressed_ms']:.4f} ms{fastest_note(ref)}); hypervolume box: accuracy > {ref_acc:.4f}, latency < {ref_ms:.4f} ms")
    sweep = run_sweep(ws, space, evaluator, base) if "sensitivity" in methods else None

    runs: dict[str, list[list]] = {m: [] for m in methods}
    keys: dict[str, list[list]] = {m: [] for m in methods}  # each point's configuration key (None: stopped or failed)
    configs: dict = {}
    seconds: dict[str, float] = dict.fromkeys(methods, 0.0)

    def write(final: bool, timing: dict | None = None):
        reference, box = ref, {"accuracy": ref_acc, "latency_ms": ref_ms, "floor": args.floor}
        points = {m: r for m, r in runs.items() if r}
        extra: dict = {}
        if timing is not None:  # the figures on the fronts timed side by side at the end
            reference = {**ref, **{k: timing[k] for k in ("label", "runtime", "latency_ms", "ratio_to_tvm", "timed_ms", "tvm_uncompressed_ms", "rounds", "fastest")}}
            box = {**box, "latency_ms": timing["latency_ms"]}
            extra = {"reference_at_start": ref, "front_timing": timing, "points_recorded": points}
            points = retimed(points, keys, timing["retimed_ms"])
        doc = {"host": describe(), "cache": str(cache_dir()), "study": str(args.study), "model": base.model.name, "target": profile.name, "trials": args.trials, "seeds": args.seeds,
               "sampler": base.sampler, "val_images": len(ws.data.val), "uncompressed": {"accuracy": acc0, "latency_ms": ms0},
               "reference": reference, "reference_point": box,
               **summarise(points, ref_acc, box["latency_ms"]), "seconds": seconds, "seconds_all_runs": ledger.seconds(),
               "wall_s": time.perf_counter() - t_start, "complete": final, "points": points, "keys": keys, **extra}
        if args.json:
            Path(args.json).write_text(json.dumps(doc, indent=1))
        return doc

    for seed in range(args.seeds):
        for method in methods:
            t0 = time.perf_counter()
            ledger.start(method, seed)
            if method == "vitune":
                pairs = run_search(base, method, seed, args.trials, base.sampler, True, out_dir, evaluator)
            elif method == "no-refine":
                pairs = run_search(base, method, seed, args.trials, base.sampler, True, out_dir, evaluator, refine=False)
            elif method in ("nsga2", "evolution"):
                pairs = run_search(base, method, seed, args.trials, method, True, out_dir, evaluator)
            elif method == "random":
                pairs = run_search(base, method, seed, args.trials, "random", False, out_dir, evaluator)
            elif method == "uniform":
                pairs = evaluate_all(evaluator, uniform_configs(space, args.trials, seed), f"uniform s{seed}")
            elif method == "greedy":
                pairs = evaluate_all(evaluator, greedy_configs(ws, layout, base.methods, args.trials), f"greedy s{seed}")
            else:
                pairs = evaluate_all(evaluator, [space.to_config(p) for p in sensitivity_params(space, sweep, args.trials)], f"sensitivity s{seed}")
            runs[method].append([p for p, _ in pairs])
            keys[method].append([c.key if p is not None and c is not None else None for p, c in pairs])
            configs.update((c.key, c) for p, c in pairs if p is not None and c is not None)
            seconds[method] += time.perf_counter() - t0
            ledger.stop()
            write(final=False)
    if tuner is not None:
        tuner.close()
    timing = None
    if args.retime_rounds:
        wanted = front_keys(runs, keys, args.retime_margin)
        print(f"{len(wanted)} configurations on or within {100 * args.retime_margin:.0f} % of a run's front, built and timed "
              f"side by side with the uncompressed model in {args.retime_rounds} interleaved rounds")
        todo = {k: configs[k] for k in wanted}
        todo.setdefault(identity_config.key, identity_config)
        t0 = time.perf_counter()
        ledger.start("front timing", 0)
        timing = time_fronts(ws, profile, evaluator, todo, identity_config.key, ms0, args.retime_rounds, args.reference)
        timing["margin"] = args.retime_margin
        seconds["front timing"] = time.perf_counter() - t0
        ledger.stop()
        if timing["untuned"]:
            print(f"warning: {len(timing['untuned'])} builds had untuned workloads: {timing['untuned']}")
    doc = write(final=True, timing=timing)
    report(doc, methods)
    if args.plot:
        plot(doc, methods, args.plot)
        print(f"wrote {args.plot}")
    if args.json:
        print(f"wrote {args.json}")


def fastest_note(ref: dict) -> str:
    """Where the reference is not the fastest runtime on the target, the fastest, for the record."""
    f = ref.get("fastest")
    if not f or f["runtime"] == ref["runtime"]:
        return ""
    return f"; the fastest runtime here is {f['label']}, {f['latency_ms']:.4f} ms ({ref['latency_ms'] / f['latency_ms']:.2f}x faster): no speed-up is claimed against it"


def seeds_done(doc: dict) -> str:
    """The seeds every method completed, e.g. ``"1 of 2"`` for a run stopped early."""
    done = min((len(runs) for runs in doc["points"].values() if runs), default=0)
    return str(done) if done == doc["seeds"] else f"{done} of {doc['seeds']}"


def report(doc: dict, methods) -> None:
    rows = doc["methods"]
    ref = doc["reference"]
    fmt = lambda v, f="{:.4f}": f.format(v) if v is not None else "-"  # noqa: E731
    print(f"{doc['trials']} evaluations per method and seed, {seeds_done(doc)} seeds; speeds against {ref['label']} ({ref['latency_ms']:.4f} ms{fastest_note(ref)}); "
          f"{doc['wall_s'] / 60:.1f} min in this invocation" + (f", {sum(doc['seconds_all_runs'].values()) / 60:.1f} min in the methods and the front timing over all"
                                                                 if doc.get("seconds_all_runs") else ""))
    print(f"{'method':<12} {'HV median':>10} {'HV IQR':>9} {'vs random':>9} " + " ".join(f"{'acc@' + k:>8}" for k in next(iter(rows.values()))["acc_at"])
          + f" {'to 95%':>7} {'seconds':>8}")
    for m in methods:
        r = rows[m]
        hv = r["hypervolume"]
        ratio = r["hypervolume_vs_random"]
        print(f"{m:<12} {hv['median']:>10.6f} {hv['iqr']:>9.6f} {fmt(ratio, '{:.3f}'):>9} " + " ".join(f"{fmt(v):>8}" for v in r["acc_at"].values())
              + f" {fmt(r['trials_to_95'], '{:.0f}'):>7} {doc.get('seconds_all_runs', doc['seconds']).get(m, doc['seconds'][m]):>8.0f}")
    if "vitune" not in rows:
        return
    v = rows["vitune"]
    others = [m for m in methods if m in BASELINES]
    for m in (m for m in methods if m != "vitune" and m not in BASELINES):
        print(f"vitune's variant {m}: median hypervolume {rows[m]['hypervolume']['median']:.6f}, "
              f"{100 * (rows[m]['hypervolume']['median'] / v['hypervolume']['median'] - 1):+.1f} % against vitune's default")
    if v["hypervolume_vs_random"] is not None:
        print(f"target: vitune's median hypervolume >= 1.15x random's: {v['hypervolume_vs_random']:.3f}x")
    if others:
        best = max(others, key=lambda m: rows[m]["hypervolume"]["median"])
        print(f"target: above every baseline's median hypervolume: best baseline {best} "
              f"{rows[best]['hypervolume']['median']:.6f}, vitune {v['hypervolume']['median']:.6f}")
        for speed in v["acc_at"]:
            accs = [rows[m]["acc_at"][speed] for m in others if rows[m]["acc_at"][speed] is not None]
            if v["acc_at"][speed] is not None and accs:
                print(f"at {speed}: vitune's median accuracy {v['acc_at'][speed]:.4f} against the best baseline's {max(accs):.4f} "
                      f"({100 * (v['acc_at'][speed] - max(accs)):+.2f} points; target at 3x, or 5x: >= +1)")
            elif v["acc_at"][speed] is None and not accs:
                print(f"at {speed}: no method reached it")
    if "random" in rows:
        r95, v95 = rows["random"]["trials_to_95"], v["trials_to_95"]
        print(f"target: trials to 95 % of the best hypervolume: vitune {fmt(v95, '{:.0f}')}, random {fmt(r95, '{:.0f}')} (target: <= half)")


def plot(doc: dict, methods, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref_ms, ref_acc = doc["reference_point"]["latency_ms"], doc["reference_point"]["accuracy"]
    every = [p for m in methods for run in doc["points"][m] for p in run if p is not None]
    lo = min((lat for _, lat in every), default=ref_ms / 5)
    grid = [lo + (ref_ms - lo) * i / 199 for i in range(200)]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for m in methods:
        curves = [attainment(run, grid) for run in doc["points"][m]]
        med, q1s, q3s, xs = [], [], [], []
        for j, x in enumerate(grid):
            col = [c[j] if c[j] is not None else ref_acc for c in curves]
            q1, q2, q3 = quartiles(col)
            xs.append(x)
            med.append(q2)
            q1s.append(q1)
            q3s.append(q3)
        hv = doc["methods"][m]["hypervolume"]
        (line,) = ax.step(xs, med, where="post", label=f"{m}: HV {hv['median']:.5f} (IQR {hv['iqr']:.5f})")
        ax.fill_between(xs, q1s, q3s, step="post", color=line.get_color(), alpha=0.15)
    ax.scatter([doc["uncompressed"]["latency_ms"]], [doc["uncompressed"]["accuracy"]], marker="*", s=150, color="black", label="uncompressed (TVM)")
    for k in (2, 3, 5):
        ax.axvline(ref_ms / k, color="grey", linestyle=":", linewidth=1)
        ax.text(ref_ms / k, 0.02, f" {k}x", color="grey", transform=ax.get_xaxis_transform())
    ax.set_xlabel(f"latency on {doc['target']} (ms, tuned TVM build); {doc['reference']['label']} = {ref_ms:.3f} ms")
    ax.set_ylabel(f"best validated accuracy within the latency ({doc['val_images']} images)")
    ax.set_ylim(max(ref_acc, doc["uncompressed"]["accuracy"] - 0.04), min(1.0, doc["uncompressed"]["accuracy"] + 0.015))
    ax.set_title(f"{doc['model']}: median fronts over {seeds_done(doc)} seeds, {doc['trials']} evaluations each")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    main()

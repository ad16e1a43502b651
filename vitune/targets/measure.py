"""Measure a model's latency on a target: compile, run, time — returning a record, never raising.

``measure(model, example, profile)`` is the measured latency source of the search: whatever
fails (export, import, build, run) comes back as ``Measurement(error="...")`` with the stage
named, so one bad candidate never takes a study down.
"""

from __future__ import annotations

import statistics
import time
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

import torch

from vitune.errors import short_reason


@dataclass(frozen=True)
class Measurement:
    """Result of timing one model on one target."""

    target: str
    latency_ms: float | None = None  # the protocol's statistic (median or min) over repeats
    samples_ms: tuple[float, ...] = ()  # one mean per repeat
    spread_ms: float | None = None  # interquartile range of the samples
    error: str | None = None  # what failed, with the stage named; None when ok
    timings: dict[str, float] = field(default_factory=dict)  # export_s, build_s, run_s, ...
    source: str = "measured"  # measured | predicted:<model>
    peak_memory_bytes: int | None = None  # the build's planned memory for one run (vitune.targets.memory)
    # with a DriftReference: how slow the machine ran when this was timed (the reference build's
    # latency then over its usual latency; < 1 in a fast moment), and the latency as timed, before
    # latency_ms = raw / drift
    drift: float | None = None
    raw_latency_ms: float | None = None
    attempts: int | None = None  # with a DriftReference: how many times it was timed (1 + retries taken)

    @property
    def ok(self) -> bool:
        return self.error is None and self.latency_ms is not None

    def to_dict(self) -> dict:
        data = asdict(self)
        data["samples_ms"] = list(self.samples_ms)
        return data


# How measurements in this context share the machine with other processes: hold(False) around CPU
# work (export, build, code generation: other processes may do CPU work too, none may time),
# hold(True) around timing runs (nothing else runs). None: no other process to share with.
_HOLD: ContextVar[Callable[[bool], AbstractContextManager] | None] = ContextVar("vitune_host_hold", default=None)


@contextmanager
def host_hold(hold: Callable[[bool], AbstractContextManager] | None):
    """Within this block, :func:`measure` and :func:`time_compiled` build under ``hold(False)``
    and time under ``hold(True)`` (e.g. a :class:`~vitune.search.coordination.HostLock`'s shared
    and exclusive locks); tuning, which times candidates as it goes, holds ``hold(True)``
    throughout. So parallel workers on one machine compile side by side and time alone."""
    token = _HOLD.set(hold)
    try:
        yield
    finally:
        _HOLD.reset(token)


def _held(exclusive: bool) -> AbstractContextManager:
    hold = _HOLD.get()
    return hold(exclusive) if hold is not None else nullcontext()


def _iqr(samples: list[float]) -> float:
    if len(samples) < 2:
        return 0.0
    q = statistics.quantiles(samples, n=4, method="inclusive")
    return q[2] - q[0]


def measure(model: torch.nn.Module, example: torch.Tensor, profile, compiled_out: list | None = None, tuner=None,
            reference: "DriftReference | None" = None, reuse_kernels: bool = False) -> Measurement:
    """Compile ``model`` for ``profile`` and time it there. Never raises (except KeyboardInterrupt).

    If ``compiled_out`` is a list, the :class:`CompiledModel` is appended to it (for export).
    With a ``reference``, the build is timed between two timings of the reference and its
    latency corrected for the machine's drift (:class:`DriftReference`). ``reuse_kernels``:
    kernels compiled earlier in this process are reused where the target allows it
    (:func:`~vitune.targets.compile.compile_model`).
    """
    with _held(tuner is not None and tuner.mode == "tune"):  # tuning times candidates: nothing else may run
        compiled, failed = _compile(model, example, profile, tuner, reuse_kernels)
    if failed is not None:
        return failed
    if compiled_out is not None:
        compiled_out.append(compiled)
    return time_compiled(compiled, example, profile) if reference is None else reference.time(compiled, example, profile)


def _compile(model: torch.nn.Module, example: torch.Tensor, profile, tuner, reuse_kernels: bool = False):
    """``(CompiledModel, None)``, or ``(None, the failed Measurement)``."""
    from vitune.targets.compile import compile_model

    try:
        return compile_model(model, example, profile, tuner, reuse_kernels=reuse_kernels), None
    except Exception as err:  # a measurement is a record, never an exception into the search
        return None, Measurement(target=profile.name, error=f"compile failed on {profile.name}: {short_reason(err)}")


def measure_many(models, examples, profile, tuner=None, rounds: int = 3) -> list[Measurement]:
    """Measure several models together: build each once, then time them in ``rounds``
    interleaved rounds (A B C, A B C, ...). Never raises (except KeyboardInterrupt).

    A burst of load on a shared machine lasts seconds: timed back to back, one model can spend
    its whole timing inside one and come out 30 % slow. Interleaved, the burst costs each model
    one round at most, and the latency — the protocol's statistic over every round's repeats —
    is taken across a window of ``rounds`` x (models x one timing). Use it where several
    latencies are compared with each other (cost-model samples, block tables).
    """
    with _held(tuner is not None and tuner.mode == "tune"):
        pairs = [_compile(model, example, profile, tuner) for model, example in zip(models, examples)]
    built = [compiled for compiled, _ in pairs]
    out: list[Measurement | None] = [failed for _, failed in pairs]
    samples: list[list[float]] = [[] for _ in models]
    timings: list[dict] = [{} for _ in models]
    for _ in range(max(1, rounds)):
        for i, compiled in enumerate(built):
            if out[i] is not None:
                continue
            m = time_compiled(compiled, examples[i], profile)
            if not m.ok:
                out[i] = m
                continue
            samples[i].extend(m.samples_ms)
            totals = {k: timings[i].get(k, 0.0) + m.timings.get(k, 0.0) for k in ("codegen_s", "run_s")}  # every round's
            timings[i] = {**m.timings, **totals}  # the build's own timings come with each round's record
    return [
        out[i] or Measurement(
            target=profile.name, latency_ms=profile.protocol.latency_ms(samples[i]), samples_ms=tuple(samples[i]),
            spread_ms=_iqr(samples[i]), timings=timings[i],
            peak_memory_bytes=built[i].peak_memory_bytes if built[i] is not None else None,
        )
        for i in range(len(models))
    ]


def time_compiled(compiled, example: torch.Tensor, profile) -> Measurement:
    """Time an already built :class:`CompiledModel` on ``profile``'s device. Never raises."""
    from vitune.targets.runner import runner_for

    stage = "prepare"
    timings: dict[str, float] = dict(compiled.timings)
    try:
        runner = runner_for(profile)
        t0 = time.perf_counter()
        with _held(False):
            runner.prepare(compiled)  # local: LLVM codegen; rpc: link, upload (compile cost, not timing)
        timings["codegen_s"] = time.perf_counter() - t0
        stage = "run"
        with _held(True):
            t0 = time.perf_counter()
            samples = runner.time(compiled, example.numpy(), profile.protocol)
            timings["run_s"] = time.perf_counter() - t0
        if compiled.tuning is not None:
            timings.update(tuned_workloads=compiled.tuning.from_database + compiled.tuning.tuned, untuned_workloads=compiled.tuning.untuned,
                           seeded_workloads=compiled.tuning.from_seed)
        return Measurement(
            target=profile.name,
            latency_ms=profile.protocol.latency_ms(samples),
            samples_ms=tuple(samples),
            spread_ms=_iqr(samples),
            timings=timings,
            peak_memory_bytes=compiled.peak_memory_bytes,
        )
    except Exception as err:  # a measurement is a record, never an exception into the search
        return Measurement(target=profile.name, error=f"{stage} failed on {profile.name}: {short_reason(err)}", timings=timings)
    finally:
        compiled.prepared = None  # give the device back now (a tracker lends it to one session at a time)


def agreement(model: torch.nn.Module, compiled, profile, dataset) -> tuple[float, float, int]:
    """Run every image of ``dataset`` (batch 1) through PyTorch and the TVM build on the device:
    ``(top-1 agreement, largest absolute logit difference, images)``."""
    import numpy as np

    from vitune.data.splits import iterate
    from vitune.targets.runner import runner_for

    images = [x for x, _ in iterate(dataset, batch_size=1)]
    agree, worst = 0, 0.0
    with torch.inference_mode():
        for x, got in zip(images, runner_for(profile).run_many(compiled, (x.numpy() for x in images))):
            ref = model(x).numpy()
            worst = max(worst, float(np.abs(ref - got).max()))
            agree += int(ref.argmax() == got.argmax())
    return agree / len(images) if images else float("nan"), worst, len(images)


class DriftReference:
    """One build (the uncompressed model's) timed again around every candidate: the
    machine's speed at that moment against its usual speed.

    A shared machine runs slow in windows of seconds to minutes (another tenant, a burst of
    I/O): a candidate timed inside one reads 30 to 60 % slow on this 2-core VM, and the search
    ranks it by that. Side by side in interleaved rounds, the same builds keep their order
    (``bench/fidelity.py``'s noise floor). Two defences, in this order:

    * **wait it out**: where the reference, timed just before and just after the candidate, ran
      more than ``tolerance`` slower than usual, the three are timed again (``retries`` times at
      most) and the attempt with the quietest reference kept;
    * **scale what is left**: :meth:`correct` divides the candidate's latency by the reference's
      slowdown (``drift`` = reference then / its usual latency), so candidates timed at
      different moments compare as if timed together; the latency as timed stays in
      ``raw_latency_ms``.

    A slowdown does not fall alike on every build: on a Zen 4 VM whose neighbours contend for the
    cache, the uncompressed model (7 MB of weights) ran 1.3 to 1.75x its fastest in most trials
    while a compressed one (1 MB) ran 1.1x, so dividing by the reference's slowdown made small
    candidates read up to 40 % fast, by when they were timed. Hence the retries, and hence the
    usual speed is the ``baseline`` statistic of every timing of the reference this process has
    seen (``"median"``): scaled against its ``"fastest"`` (vitune before stop 38), candidates
    were corrected by 1.2x or more in most trials. ``bench/fidelity.py`` compares both rules with
    no correction against the shipped builds timed side by side.

    Each timing of the reference lasts about ``window_s`` (the profile's ``max_timing_s`` lowered
    to it: fewer repeats, one warm-up run, never under 3 repeats): the machine's speed over a
    second or so around the candidate, whatever the model's size. A 44 ms DeiT-Tiny reference
    keeps the full protocol (25 runs); a 130 ms DeiT-Small one is timed in 11 runs instead of 25
    (1.4 instead of 3.2 s, twice a trial)."""

    def __init__(self, compiled, example: torch.Tensor, profile, *, baseline: str = "median", retries: int = 2,
                 tolerance: float = 1.1, window_s: float = 1.2):
        if baseline not in ("median", "fastest"):
            raise ValueError(f"DriftReference baseline must be 'median' or 'fastest', not {baseline!r}")
        self.compiled, self.example, self.profile = compiled, example, profile
        cap = profile.protocol.max_timing_s
        self.reference_profile = replace(profile, protocol=replace(profile.protocol, max_timing_s=min(cap, window_s) if cap else window_s))
        self.baseline, self.retries, self.tolerance = baseline, max(0, int(retries)), float(tolerance)
        self.history: list[float] = []  # every timing of the reference, in order

    def seen(self, latency_ms: float | None) -> None:
        """Take a timing of the reference made elsewhere (e.g. its own trial's) into account."""
        if latency_ms:
            self.history.append(latency_ms)

    @property
    def usual_ms(self) -> float | None:
        """The reference's latency when the machine runs as usual (None: never timed)."""
        if not self.history:
            return None
        return statistics.median(self.history) if self.baseline == "median" else min(self.history)

    def now(self) -> float | None:
        """The reference's latency now (None when it could not be timed)."""
        m = time_compiled(self.compiled, self.example, self.reference_profile)
        if not m.ok:
            return None
        self.seen(m.latency_ms)
        return m.latency_ms

    def time(self, compiled, example: torch.Tensor, profile) -> Measurement:
        """``compiled`` timed between two timings of the reference, again while they read a slow
        window (:attr:`retries`), corrected for the drift of the quietest attempt."""
        best: Measurement | None = None
        for attempt in range(1, 2 + self.retries):
            before = self.now()
            m = replace(self.correct(time_compiled(compiled, example, profile), before), attempts=attempt)
            if not m.ok or m.drift is None:
                return m
            if best is None or m.drift < best.drift:  # type: ignore[operator]
                best = m
            if m.drift <= self.tolerance:
                break
        assert best is not None
        return replace(best, attempts=attempt)

    def correct(self, m: Measurement, before: float | None = None) -> Measurement:
        """``m`` scaled by the machine's slowdown: the reference timed now, and ``before``
        (its timing just before ``m``'s, if any) averaged with it, so a slow window that starts
        or ends during ``m``'s timing counts half. ``m`` itself when a timing failed."""
        if not m.ok:
            return m
        after = self.now()
        both = [v for v in (before, after) if v]
        usual = self.usual_ms
        if not both or not usual:
            return m
        drift = statistics.fmean(both) / usual
        return replace(m, latency_ms=m.latency_ms / drift, drift=drift, raw_latency_ms=m.latency_ms)  # type: ignore[operator]

"""Tuning candidates built and timed in a watched worker process.

MetaSchedule's default ``LocalBuilder`` forks a pool and links every candidate into a shared
library: about 6 s per candidate on a 2-core machine. Building the scheduled TIR with the TVM
driver and keeping the runtime module in memory takes about 0.06 s, but built in the tuning
process, one pathological schedule can hang LLVM's code generation for good (seen here: 22
minutes on one candidate, the study stuck) or crash the interpreter, taking the study with it.

So every candidate is built and timed in one long-lived child process, :class:`CandidateWorker`,
one request at a time, each with a deadline (:class:`~vitune.targets.profile.CandidateLimits`,
a target file's ``[tuning]`` table). A request past its
deadline gets the child killed and replaced; a child that dies (a segfault in LLVM or TVM) is
replaced the same way. The candidate fails with its reason (``build exceeded 10.0 s``, ``run
crashed the worker (SIGSEGV)``), written in full to the tuning database's ``failures/`` folder
with the candidate's TIR as a reproducer, and tuning carries on. Candidates the replaced child
had built are built again by the new one when their turn to run comes: nothing good is lost.

``WorkerBuilder`` + ``WorkerRunner`` tune the local CPU (or a local GPU): the runtime module stays
in the child, no library is written. ``WorkerBuilder`` with ``export_dir`` builds and links each
candidate into a library (cross-compiled) for :class:`vitune.targets.msremote.RemoteRunner`.

Contract of a candidate build function (``build=`` ``"module:function"``, resolved in the child):
``function(mod: IRModule, target: Target) -> runtime.Module``; tests inject one that hangs or
crashes this way.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
from tvm.s_tir.meta_schedule.runner import PyRunner, PyRunnerFuture, RunnerResult

from vitune.errors import message_line, short_reason
from vitune.targets.profile import CandidateLimits

DEFAULT_BUILD = "vitune.targets.msworker:build_candidate"
_STDERR_TAIL = 4000  # characters of a dead child's stderr kept in the failure log


def build_candidate(mod, target):
    """What MetaSchedule's ``default_build`` does, minus the deprecated driver entry point."""
    import tvm
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    return tvm.tirx.build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)


@dataclass
class Outcome:
    """One request's result: ``value`` when ``ok``; else ``error`` (one line) and whether the
    child was ``stopped`` (past its deadline) or ``crashed``."""

    ok: bool
    value: Any = None
    error: str = ""
    stopped: bool = False
    crashed: bool = False


def _signal_name(returncode: int | None) -> str:
    if returncode is None:
        return "no exit status"
    if returncode < 0:
        try:
            return signal.Signals(-returncode).name
        except ValueError:
            return f"signal {-returncode}"
    return f"exit status {returncode}"


class FailureLog:
    """``<folder>/failures.log``: one block per stopped or crashed candidate (when, which
    workload, the reason, the dead child's last stderr) and ``<folder>/candidate-*.json``, the
    candidate's TIR (``tvm.ir.load_json`` reads it back; build it to reproduce)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / "failures.log"

    def write(self, reason: str, task: str, mod_json: str | None, stderr_tail: str) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            stamp = time.strftime("%Y%m%d-%H%M%S")
            repro = ""
            if mod_json is not None:
                repro_path = self.folder / f"candidate-{stamp}-{os.getpid()}-{next(_SEQ)}.json"
                repro_path.write_text(mod_json)
                repro = f"\ncandidate TIR: {repro_path} (tvm.ir.load_json, then tvm.tirx.build to reproduce)"
            tail = f"\nworker stderr (last {_STDERR_TAIL} characters):\n{stderr_tail.rstrip()}" if stderr_tail.strip() else ""
            with self.path.open("a") as f:
                f.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {task}: {reason}{repro}{tail}\n\n")
        except OSError:  # the log is for people; tuning goes on without it
            pass


_SEQ = itertools.count()


@dataclass
class _Built:
    mod_json: str
    target_json: str
    export_path: str
    generation: int
    task: str


@dataclass
class WorkerStats:
    stopped: int = 0  # candidates whose build or run passed its deadline
    crashed: int = 0  # candidates whose build or run killed the child
    restarts: int = 0
    reasons: dict[str, int] = field(default_factory=dict)  # one-line reason → candidates


class CandidateWorker:
    """A child process that builds and times candidates, watched; see the module doc.

    Not thread-safe: one tuning run drives it. ``close()`` ends the child (also at garbage
    collection; the child dies with this process too)."""

    def __init__(self, limits: CandidateLimits | None = None, log: FailureLog | None = None, build: str = DEFAULT_BUILD,
                 stderr_dir: Path | None = None, env: dict[str, str] | None = None):
        self.limits = limits or CandidateLimits()
        self.log = log
        self.build_spec = build
        self.env = env
        self.stats = WorkerStats()
        self.generation = 0
        self._stderr_dir = Path(stderr_dir) if stderr_dir else None
        self._proc: subprocess.Popen | None = None
        self._send: Connection | None = None
        self._recv: Connection | None = None
        self._stderr_path: Path | None = None
        self._times: dict[str, list[float]] = {"build": [], "run": []}
        self._built: dict[str, _Built] = {}
        self._keys = itertools.count()

    # --- the child -------------------------------------------------------------------------

    def _start(self) -> None:
        import tempfile

        req_r, req_w = os.pipe()
        resp_r, resp_w = os.pipe()
        folder = self._stderr_dir or Path(tempfile.gettempdir())
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="vitune-tuning-worker-", suffix=".stderr", dir=folder)
        self._stderr_path = Path(name)
        # tvm_ffi imports torch whenever it can (2.5 s and 700 MB here); candidates never need it
        code = (f"import sys; sys.modules.setdefault('torch', None)\n"
                f"from vitune.targets.msworker import serve; serve({req_r}, {resp_w}, {self.build_spec!r})")
        env = dict(os.environ, **(self.env or {}))
        try:
            self._proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL, stdout=fd, stderr=fd,
                                          pass_fds=(req_r, resp_w), env=env, close_fds=True)
        finally:
            os.close(fd)
            os.close(req_r)
            os.close(resp_w)
        self._send = Connection(req_w, readable=False)
        self._recv = Connection(resp_r, writable=False)
        self.generation += 1
        ok = False
        try:
            ok = self._recv.poll(self.limits.start_s) and self._recv.recv()[0] == "ready"
        except (EOFError, OSError):
            pass
        if not ok:
            tail = self._stderr_tail()
            self._kill()
            raise RuntimeError(f"the tuning worker did not start within {self.limits.start_s:.0f} s: {message_line(tail) or 'no output'}")

    def _alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _stderr_tail(self) -> str:
        try:
            with self._stderr_path.open("rb") as f:  # type: ignore[union-attr]
                f.seek(0, 2)
                f.seek(max(0, f.tell() - _STDERR_TAIL))
                return f.read().decode(errors="replace")
        except (OSError, AttributeError):
            return ""

    def _kill(self) -> int | None:
        rc = None
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            try:
                rc = self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                rc = None
        for conn in (self._send, self._recv):
            if conn is not None:
                try:
                    conn.close()
                except OSError:
                    pass
        self._proc = self._send = self._recv = None
        return rc

    def close(self) -> None:
        self._kill()
        if self._stderr_path is not None:
            self._stderr_path.unlink(missing_ok=True)
            self._stderr_path = None
        self._built.clear()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def _request(self, kind: str, message: tuple, task: str, mod_json: str | None) -> Outcome:
        """Send one request and wait for its answer within the deadline for ``kind``."""
        if not self._alive():
            if self._proc is not None:  # died between requests
                self._kill()
            self._start()
        limit = self.limits.deadline(self._times[kind])
        t0 = time.perf_counter()
        try:
            self._send.send(message)  # type: ignore[union-attr]
            answered = self._recv.poll(limit)  # type: ignore[union-attr]  # also True when the child died
            if answered:
                status, value = self._recv.recv()  # type: ignore[union-attr]
        except (EOFError, OSError):
            answered, status = True, "dead"
        seconds = time.perf_counter() - t0
        if not answered:
            tail = self._stderr_tail()
            self._kill()
            return self._failed(f"{kind} exceeded {limit:.1f} s (the worker was stopped and replaced)", task, mod_json, tail, stopped=True)
        if status == "dead":
            tail = self._stderr_tail()
            rc = self._kill()
            return self._failed(f"{kind} crashed the worker ({_signal_name(rc)})", task, mod_json, tail, crashed=True)
        self._times[kind].append(seconds)
        if status == "ok":
            return Outcome(True, value)
        return Outcome(False, error=str(value))

    def _failed(self, reason: str, task: str, mod_json: str | None, tail: str, stopped=False, crashed=False) -> Outcome:
        self.stats.restarts += 1
        self.stats.stopped += stopped
        self.stats.crashed += crashed
        self.stats.reasons[reason] = self.stats.reasons.get(reason, 0) + 1
        if self.log is not None:
            self.log.write(reason, task, mod_json, tail)
        return Outcome(False, error=reason, stopped=stopped, crashed=crashed)

    # --- requests --------------------------------------------------------------------------

    def build(self, mod_json: str, target_json: str, task: str = "", export_path: str = "", cross_compiler: str = "") -> Outcome:
        """Build a candidate (TIR as ``tvm.ir.save_json``, target as its exported JSON); without
        ``export_path`` the child keeps the runtime module and the outcome's value is its key,
        with one it links the library there (``cross_compiler`` if given) and keeps nothing."""
        key = f"candidate-{next(self._keys)}"
        out = self._request("build", ("build", key, mod_json, target_json, export_path, cross_compiler), task, mod_json)
        if out.ok:
            out.value = export_path or key
            if not export_path:
                self._built[key] = _Built(mod_json, target_json, export_path, self.generation, task)
        return out

    def run(self, key: str, args_info: list, device_type: str, number: int, repeat: int, min_repeat_ms: int, threads: int) -> Outcome:
        """Time a candidate the child built (built again first if that child was replaced);
        the value is MetaSchedule's run seconds, one per repeat."""
        built = self._built.pop(key, None)
        if built is None:
            return Outcome(False, error=f"no built candidate {key}")
        if built.generation != self.generation or not self._alive():
            again = self._request("build", ("build", key, built.mod_json, built.target_json, "", ""), built.task, built.mod_json)
            if not again.ok:
                return again
        return self._request("run", ("run", key, args_info, device_type, number, repeat, min_repeat_ms, threads), built.task, built.mod_json)


def _die_with_parent() -> None:
    """Linux: the kernel kills this child when the tuning process dies (even mid-build)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _resolve(spec: str):
    import importlib

    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def serve(request_fd: int, response_fd: int, build_spec: str = DEFAULT_BUILD) -> None:
    """The child's loop: answer requests until the parent closes the pipe."""
    import faulthandler

    _die_with_parent()
    faulthandler.enable()  # a segfault leaves its Python stack in the stderr log
    import vitune  # noqa: F401  (sizes TVM's thread pool as the parent's)

    requests = Connection(request_fd, writable=False)
    responses = Connection(response_fd, readable=False)
    import tvm
    from tvm.s_tir.meta_schedule.runner.local_runner import default_alloc_argument

    build = _resolve(build_spec)
    modules: dict[str, Any] = {}
    responses.send(("ready", os.getpid()))
    while True:
        try:
            message = requests.recv()
        except (EOFError, OSError):
            return
        try:
            op = message[0]
            if op == "build":
                _, key, mod_json, target_json, export_path, cross = message
                rt_mod = build(tvm.ir.load_json(mod_json), tvm.target.Target(json.loads(target_json)))
                if export_path:
                    kwargs = {}
                    if cross:
                        from tvm.support.cc import cross_compiler

                        kwargs["fcompile"] = cross_compiler(cross)
                    rt_mod.export_library(export_path, **kwargs)
                else:
                    modules[key] = rt_mod
                value: Any = None
            elif op == "run":
                _, key, args_info, device_type, number, repeat, min_repeat_ms, threads = message
                rt_mod = modules.pop(key)
                dev = tvm.device(device_type, 0)
                if threads:  # time as the target will run
                    from vitune.targets.threads import use_threads

                    use_threads(threads, dev)
                (args,) = default_alloc_argument(dev, args_info, 1)
                evaluator = rt_mod.time_evaluator(rt_mod.entry_name, dev, number=number, repeat=repeat, min_repeat_ms=min_repeat_ms)
                value = [float(c) for c in evaluator(*args).results]
            else:
                raise ValueError(f"unknown request {op!r}")
            responses.send(("ok", value))
        except Exception as err:
            responses.send(("error", short_reason(err)))


# --- MetaSchedule's side ---------------------------------------------------------------------


@derived_object
class Done(PyRunnerFuture):
    """A runner result that is ready (every runner here times synchronously)."""

    def __init__(self, result):
        super().__init__()
        self._result = result

    def done(self):
        return True

    def result(self):
        return self._result


def failed(failures: dict[str, int], error: str):
    """A failed candidate's result, counted by its error (the tuner reports the commonest)."""
    failures[error] = failures.get(error, 0) + 1
    return Done(RunnerResult(None, error))


def target_json(target) -> str:
    return str(target)  # the target as JSON (its export(), with the host nested)


@derived_object
class WorkerBuilder(PyBuilder):
    """Builds each candidate in the worker; with ``export_dir`` links it into a library there."""

    def __init__(self, worker: CandidateWorker, export_dir: str = "", cross_compiler: str = ""):
        super().__init__()
        self.worker = worker
        self.export_dir = export_dir
        self.cross_compiler = cross_compiler
        self.built = 0
        self.failures: dict[str, int] = {}  # error line → candidates that did not build
        self._counter = itertools.count()

    def build(self, build_inputs):
        import tvm

        results = []
        for item in build_inputs:
            task = task_name(item.mod)
            try:
                mod_json = tvm.ir.save_json(item.mod)
                tgt = target_json(item.target)
            except Exception as err:
                out = Outcome(False, error=short_reason(err))
            else:
                path = str(Path(self.export_dir) / f"candidate-{next(self._counter)}.so") if self.export_dir else ""
                out = self.worker.build(mod_json, tgt, task, path, self.cross_compiler)
            if out.ok:
                self.built += 1
                results.append(BuilderResult(out.value, None))
            else:
                self.failures[out.error] = self.failures.get(out.error, 0) + 1
                results.append(BuilderResult(None, out.error))
        return results


@derived_object
class WorkerRunner(PyRunner):
    """Times each candidate the worker built, on the local device."""

    def __init__(self, worker: CandidateWorker, number: int = 3, repeat: int = 1, min_repeat_ms: int = 20, threads: int = 0):
        super().__init__()
        self.worker = worker
        self.number, self.repeat, self.min_repeat_ms = number, repeat, min_repeat_ms
        self.threads = threads  # CPU kernels run on this many threads (0: as the pool is)
        self.measured = 0
        self.failures: dict[str, int] = {}  # error line → candidates that failed with it

    def run(self, runner_inputs):
        futures = []
        for item in runner_inputs:
            args_info = [info.as_json() for info in item.args_info]
            out = self.worker.run(item.artifact_path, args_info, str(item.device_type), self.number, self.repeat, self.min_repeat_ms, self.threads)
            if out.ok:
                futures.append(Done(RunnerResult(out.value, None)))
                self.measured += 1
            else:
                futures.append(failed(self.failures, out.error))
        return futures


def task_name(mod) -> str:
    """The candidate's workload as its buffers' shapes and dtypes (MetaSchedule names every
    candidate's function ``main``): ``main(float32[1,17,64], float32[192,64] -> float32[1,17,192])``."""
    try:
        parts = []
        for gv, func in mod.functions.items():
            shapes = [f"{b.dtype}[{','.join(str(int(d)) for d in b.shape)}]" for b in func.params]  # params are buffers
            parts.append(f"{gv.name_hint}({', '.join(shapes[:-1])} -> {shapes[-1] if shapes else ''})")
        return "; ".join(parts)
    except Exception:
        return "?"

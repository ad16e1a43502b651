"""Runners: where a :class:`CompiledModel` runs and how it is timed.

Contract (every runner, built-in or plug-in):

* ``Runner(profile)`` — cheap; connects to nothing yet;
* ``prepare(compiled)`` — everything between a build and the first run (local: LLVM code
  generation; rpc: link the library, with the profile's cross compiler, and upload it);
  :func:`vitune.targets.measure.measure` counts it as compile cost (``codegen_s``);
* ``run(compiled, inputs)`` / ``run_many(compiled, batches)`` — outputs as numpy (one loaded
  model and one weight upload for ``run_many``);
* ``time(compiled, inputs, protocol)`` — one latency sample (ms, mean of ``number`` runs) per
  repeat, after ``warmup`` untimed runs;
* ``check()`` — ``None`` when the device is usable, else one line saying what is missing.

Runners may raise; :func:`~vitune.targets.measure.measure` turns any error into a result
record. Built-in kinds: ``local`` (this process: the CPU, or a local GPU for GPU targets) and
``rpc`` (a TVM RPC server, directly or through a tracker). Plug-ins register more through the
``vitune.runners`` entry-point group (the entry point is the runner class).
"""

from __future__ import annotations

import socket
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from vitune.targets.compile import CompiledModel
from vitune.targets.profile import Protocol
from vitune.targets.threads import use_threads  # noqa: F401  (re-exported: runners and tests call it from here)

RUNNER_ENTRY_POINTS = "vitune.runners"


MIN_REPEATS = 3  # what a timing budget (Protocol.max_timing_s) never goes below


def _run_ms(vm, dev, args) -> float:
    t0 = time.perf_counter()
    vm["main"](*args)
    dev.sync()
    return max((time.perf_counter() - t0) * 1e3, 1e-3)


def _timed_loop(vm, dev, args, protocol: Protocol) -> list[float]:
    budget_ms = 1e3 * protocol.max_timing_s
    warmup, repeat = protocol.warmup, protocol.repeat
    if budget_ms and warmup:  # the first warm-up run, timed: a slow build gets one warm-up run only
        if (warmup + repeat) * _run_ms(vm, dev, args) > budget_ms:
            warmup = 1
        warmup -= 1
    for _ in range(warmup):
        vm["main"](*args)
    number = protocol.number
    once_ms = None
    if number == 0:  # calibrate, warm: enough runs per repeat to last min_repeat_ms
        once_ms = _run_ms(vm, dev, args)
        number = max(1, int(np.ceil(protocol.min_repeat_ms / once_ms)))
    if budget_ms:  # a slow build (untuned, a large model): fewer repeats, never under MIN_REPEATS
        once_ms = once_ms or _run_ms(vm, dev, args)
        if number * repeat * once_ms > budget_ms:
            repeat = max(MIN_REPEATS, int(budget_ms / (number * once_ms)))
    timer = vm.time_evaluator(
        "main",
        dev,
        number=number,
        repeat=repeat,
        min_repeat_ms=0 if protocol.number == 0 else protocol.min_repeat_ms,
        cooldown_interval_ms=protocol.cooldown_ms,
    )
    return [float(s) * 1e3 for s in timer(*args).results]


def _weights(compiled: CompiledModel, dev) -> list:
    import tvm

    return [tvm.runtime.tensor(p, dev) for p in compiled.params]


def _input(inputs: np.ndarray, dev):
    import tvm

    return tvm.runtime.tensor(np.ascontiguousarray(inputs), dev)


def _first(out) -> np.ndarray:
    first = out[0] if hasattr(out, "__len__") and not hasattr(out, "numpy") else out
    return first.numpy()


class LocalRunner:
    """Runs in this process through the TVM runtime's VirtualMachine (CPU, or a local GPU)."""

    def __init__(self, profile):
        self.profile = profile
        self.threads = profile.threads

    def _device(self):
        import tvm

        dev = tvm.device(self.profile.device_kind, 0)
        if not dev.exist:
            raise RuntimeError(f"no {self.profile.device_kind.upper()} device on this machine (target {self.profile.name})")
        return dev

    def check(self) -> str | None:
        if not self.profile.is_native:
            return (
                f"target {self.profile.name} builds for {self.profile.tvm_target.get('mtriple')}, which this "
                "machine cannot run: use an rpc runner to measure it on the device"
            )
        try:
            self._device()
        except Exception as err:
            return str(err)
        return None

    def prepare(self, compiled: CompiledModel) -> None:
        from tvm import relax

        from vitune.targets.compile import filtered_native_stderr

        problem = self.check()
        if problem:
            raise RuntimeError(problem)
        with filtered_native_stderr():
            compiled.prepared = relax.VirtualMachine(compiled.runtime_module(), self._device())

    def _vm(self, compiled: CompiledModel):
        from tvm import relax

        dev = self._device()
        use_threads(self.threads, dev)
        vm = compiled.prepared if compiled.prepared is not None else relax.VirtualMachine(compiled.runtime_module(), dev)
        compiled.prepared = None  # a VM is used by one caller
        return vm, dev

    def run(self, compiled: CompiledModel, inputs: np.ndarray) -> np.ndarray:
        return next(self.run_many(compiled, [inputs]))

    def run_many(self, compiled: CompiledModel, batches):
        vm, dev = self._vm(compiled)
        weights = _weights(compiled, dev)
        for inputs in batches:
            yield _first(vm["main"](_input(inputs, dev), *weights))

    def time(self, compiled: CompiledModel, inputs: np.ndarray, protocol: Protocol) -> list[float]:
        vm, dev = self._vm(compiled)
        return _timed_loop(vm, dev, [_input(inputs, dev), *_weights(compiled, dev)], protocol)


class RpcRunner:
    """Runs on a TVM RPC server (``python -m tvm.exec.rpc_server`` on the device), reached
    directly or through a tracker. Every network step is bounded by the profile's
    ``timeout_s``: a dead server, a wrong key or a busy device is an error, never a hang."""

    def __init__(self, profile):
        self.profile = profile
        self.spec = profile.runner_spec
        self._remote = None  # (session, tempdir) of the last prepared model

    # -- connection -------------------------------------------------------------------------
    def _reachable(self, host: str, port: int, what: str) -> None:
        try:
            socket.create_connection((host, port), timeout=min(5.0, self.spec.timeout_s)).close()
        except OSError as err:
            raise RuntimeError(f"{what} {host}:{port} is unreachable ({err.strerror or err})") from None

    def bounded(self, fn, what: str):
        """Run ``fn`` in a thread; give up after ``timeout_s`` (the thread is left to die)."""
        box: dict = {}

        def work():
            try:
                box["value"] = fn()
            except BaseException as err:  # noqa: BLE001 - reported to the caller
                box["error"] = err

        worker = threading.Thread(target=work, daemon=True)
        worker.start()
        worker.join(self.spec.timeout_s)
        if worker.is_alive():
            raise TimeoutError(f"{what} took longer than {self.spec.timeout_s:.0f} s (timeout_s of target {self.profile.name})")
        if "error" in box:
            raise box["error"]
        return box["value"]

    def _tracker_keys(self, tracker) -> dict:
        summary = tracker.summary()
        keys = dict(summary.get("queue_info", {}))
        for server in summary.get("server_info", []):
            key = str(server.get("key", "")).split(":", 1)[-1]
            keys.setdefault(key, {})
        return keys

    def session(self):
        from tvm import rpc

        s = self.spec
        if s.tracker:
            host, _, port = s.tracker.rpartition(":")
            self._reachable(host, int(port), "RPC tracker")
            tracker = self.bounded(lambda: rpc.connect_tracker(host, int(port)), f"connecting to tracker {s.tracker}")
            keys = self.bounded(lambda: self._tracker_keys(tracker), f"asking tracker {s.tracker} for its devices")
            if s.key not in keys:
                known = ", ".join(sorted(k for k in keys if k)) or "none"
                raise RuntimeError(f"tracker {s.tracker} has no device with key {s.key!r} (keys there: {known})")
            return self.bounded(
                lambda: tracker.request(s.key, session_timeout=max(s.timeout_s * 4, 60), max_retry=1),
                f"waiting for a free {s.key!r} device at tracker {s.tracker}",
            )
        self._reachable(s.host, s.port, "RPC server")
        return self.bounded(lambda: rpc.connect(s.host, s.port, s.key), f"connecting to RPC server {s.host}:{s.port}")

    def check(self) -> str | None:
        try:
            sess = self.session()
            dev = sess.device(self.profile.device_kind, 0)
            if not dev.exist:
                return f"the RPC device has no {self.profile.device_kind.upper()} device 0"
        except Exception as err:
            return str(err)
        return None

    # -- the model ----------------------------------------------------------------------------
    def prepare(self, compiled: CompiledModel) -> None:
        from vitune.targets.compile import export_library

        tmp = tempfile.TemporaryDirectory(prefix="vitune-rpc-")
        lib = Path(tmp.name) / "model.so"
        export_library(compiled, lib, self.profile)
        sess = self.session()
        self.bounded(lambda: sess.upload(str(lib)), "uploading the library")
        rlib = self.bounded(lambda: sess.load_module("model.so"), "loading the library on the device")
        compiled.prepared = (sess, rlib, tmp)

    def _loaded(self, compiled: CompiledModel):
        from tvm import relax

        if compiled.prepared is None or not isinstance(compiled.prepared, tuple):
            self.prepare(compiled)
        sess, rlib, _tmp = compiled.prepared
        dev = sess.device(self.profile.device_kind, 0)
        vm = self.bounded(lambda: relax.VirtualMachine(rlib, dev), "creating the VM on the device")
        return vm, dev

    def run(self, compiled: CompiledModel, inputs: np.ndarray) -> np.ndarray:
        return next(self.run_many(compiled, [inputs]))

    def run_many(self, compiled: CompiledModel, batches):
        vm, dev = self._loaded(compiled)
        weights = self.bounded(lambda: _weights(compiled, dev), "uploading the weights")
        def once(x):
            # results stay on the device as remote objects: the stateful API fetches them
            vm.set_input("main", x, *weights)
            vm.invoke_stateful("main")
            out = vm.get_outputs("main")
            return (out[0] if isinstance(out, (list, tuple)) else vm.get_outputs("main", 0)).numpy()

        try:
            for inputs in batches:
                x = _input(inputs, dev)
                yield self.bounded(lambda: once(x), "running the model on the device")
        finally:
            compiled.prepared = None  # the session goes with it: the device is free for others

    def time(self, compiled: CompiledModel, inputs: np.ndarray, protocol: Protocol) -> list[float]:
        vm, dev = self._loaded(compiled)
        args = self.bounded(lambda: [_input(inputs, dev), *_weights(compiled, dev)], "uploading the weights")
        return self.bounded(lambda: _timed_loop(vm, dev, args, protocol), "timing the model on the device")


_BUILTIN = {"local": LocalRunner, "rpc": RpcRunner}


def runner_kinds() -> dict[str, object]:
    """Runner kind → class (or entry point, loaded on use): built-ins and ``vitune.runners`` plug-ins."""
    from importlib.metadata import entry_points

    kinds: dict[str, object] = {ep.name: ep for ep in entry_points(group=RUNNER_ENTRY_POINTS)}
    kinds.update(_BUILTIN)
    return kinds


def runner_for(profile):
    cls = runner_kinds()[profile.runner]
    if not isinstance(cls, type):
        cls = cls.load()
    return cls(profile)

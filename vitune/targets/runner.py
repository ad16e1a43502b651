"""Runners: run a :class:`CompiledModel` on a device and time it.

Contract: ``run(compiled, inputs)`` returns the outputs as numpy (``run_many`` does so for a
sequence of inputs on one loaded model); ``time(compiled, inputs,
protocol)`` returns the per-repeat mean latency in milliseconds (one sample per repeat).
Both may raise; :func:`vitune.targets.measure.measure` turns any error into a result record.
"""

from __future__ import annotations

import os
import time

import numpy as np

from vitune.targets.compile import CompiledModel
from vitune.targets.profile import Protocol


class LocalRunner:
    """Runs in this process on the local CPU through the TVM runtime's VirtualMachine."""

    def __init__(self, threads: int):
        # The TVM runtime sizes its thread pool on first use from TVM_NUM_THREADS.
        os.environ.setdefault("TVM_NUM_THREADS", str(threads))
        self.threads = threads

    def _vm(self, compiled: CompiledModel):
        import tvm
        from tvm import relax

        dev = tvm.cpu(0)
        return relax.VirtualMachine(compiled.runtime_module(), dev), dev

    def _input(self, inputs: np.ndarray, dev):
        import tvm

        return tvm.runtime.tensor(np.ascontiguousarray(inputs), dev)

    def _weights(self, compiled: CompiledModel, dev) -> list:
        import tvm

        return [tvm.runtime.tensor(p, dev) for p in compiled.params]

    def run(self, compiled: CompiledModel, inputs: np.ndarray) -> np.ndarray:
        return next(self.run_many(compiled, [inputs]))

    def run_many(self, compiled: CompiledModel, batches):
        """Yield the outputs for each input of ``batches``: one VM, weights uploaded once."""
        vm, dev = self._vm(compiled)
        weights = self._weights(compiled, dev)
        for inputs in batches:
            out = vm["main"](self._input(inputs, dev), *weights)
            first = out[0] if hasattr(out, "__len__") and not hasattr(out, "numpy") else out
            yield first.numpy()

    def time(self, compiled: CompiledModel, inputs: np.ndarray, protocol: Protocol) -> list[float]:
        vm, dev = self._vm(compiled)
        args = [self._input(inputs, dev), *self._weights(compiled, dev)]
        for _ in range(protocol.warmup):
            vm["main"](*args)
        number = protocol.number
        if number == 0:  # calibrate: enough runs per repeat to last min_repeat_ms
            t0 = time.perf_counter()
            vm["main"](*args)
            once_ms = max((time.perf_counter() - t0) * 1e3, 1e-3)
            number = max(1, int(np.ceil(protocol.min_repeat_ms / once_ms)))
        timer = vm.time_evaluator(
            "main",
            dev,
            number=number,
            repeat=protocol.repeat,
            min_repeat_ms=0 if protocol.number == 0 else protocol.min_repeat_ms,
            cooldown_interval_ms=protocol.cooldown_ms,
        )
        result = timer(*args)
        return [float(s) * 1e3 for s in result.results]


def runner_for(profile) -> LocalRunner:
    if profile.runner == "local":
        return LocalRunner(profile.threads)
    raise ValueError(f"no runner {profile.runner!r}")  # profile validation prevents this

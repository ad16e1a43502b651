"""MetaSchedule builder and runner that work in this process (no process pools).

MetaSchedule's default ``LocalBuilder`` forks a pool and links every candidate into a shared
library: about 6 s per candidate on a 2-core machine, and candidates time out at 30 s with two
workers. Building the same scheduled TIR in-process takes about 0.06 s. ``InProcessBuilder``
compiles each candidate with the TVM driver and keeps the runtime module in memory (no export,
no linker); ``InProcessRunner`` times it on the local device with ``time_evaluator`` on random
inputs. Only for the local CPU (or a local GPU): devices reached over RPC use :mod:`vitune.targets.msremote`.
"""

from __future__ import annotations

import itertools
import threading

from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
from tvm.s_tir.meta_schedule.runner import PyRunner, PyRunnerFuture, RunnerResult

_MODULES: dict[str, object] = {}  # artifact key → runtime module built in this process
_LOCK = threading.Lock()
_COUNTER = itertools.count()


def _last_line(err: BaseException) -> str:
    """``Type: last line of the message`` (TVM errors carry a long native traceback first)."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[-1] if text else ''}"


def build_each(build_inputs, keep) -> list:
    """Build each scheduled candidate in this process (what MetaSchedule's default_build does,
    minus the deprecated driver entry point); ``keep(runtime_module)`` stores it and returns its
    artifact path. A candidate that does not build is a result with its error, not a crash."""
    import tvm
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    results = []
    for item in build_inputs:
        try:
            rt_mod = tvm.tirx.build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(item.mod), target=item.target)
            results.append(BuilderResult(keep(rt_mod), None))
        except Exception as err:
            results.append(BuilderResult(None, _last_line(err)))
    return results


@derived_object
class InProcessBuilder(PyBuilder):
    def __init__(self):
        super().__init__()
        self.built = 0

    def _keep(self, rt_mod) -> str:
        key = f"inprocess:{next(_COUNTER)}"
        with _LOCK:
            _MODULES[key] = rt_mod
        self.built += 1
        return key

    def build(self, build_inputs):
        return build_each(build_inputs, self._keep)


@derived_object
class _Done(PyRunnerFuture):
    def __init__(self, result):
        super().__init__()
        self._result = result

    def done(self):
        return True

    def result(self):
        return self._result


def _failed(failures: dict[str, int], error: str):
    """A failed candidate's result, counted by its error (the tuner reports the commonest)."""
    failures[error] = failures.get(error, 0) + 1
    return _Done(RunnerResult(None, error))


@derived_object
class InProcessRunner(PyRunner):
    def __init__(self, number: int = 3, repeat: int = 1, min_repeat_ms: int = 20, threads: int = 0):
        super().__init__()
        self.number, self.repeat, self.min_repeat_ms = number, repeat, min_repeat_ms
        self.threads = threads  # CPU kernels run on this many threads (0: as the pool is)
        self.measured = 0
        self.failures: dict[str, int] = {}  # error line → candidates that failed with it

    def run(self, runner_inputs):
        import tvm
        from tvm.s_tir.meta_schedule.runner.local_runner import default_alloc_argument

        futures = []
        for item in runner_inputs:
            with _LOCK:
                rt_mod = _MODULES.pop(item.artifact_path, None)
            if rt_mod is None:
                futures.append(_failed(self.failures, f"no in-process module {item.artifact_path}"))
                continue
            try:
                dev = tvm.device(str(item.device_type), 0)
                if self.threads:  # time as the target will run
                    from vitune.targets.runner import use_threads

                    use_threads(self.threads, dev)
                (args,) = default_alloc_argument(dev, [info.as_json() for info in item.args_info], 1)
                evaluator = rt_mod.time_evaluator(rt_mod.entry_name, dev, number=self.number, repeat=self.repeat, min_repeat_ms=self.min_repeat_ms)
                costs = [float(c) for c in evaluator(*args).results]
                futures.append(_Done(RunnerResult(costs, None)))
                self.measured += 1
            except Exception as err:
                futures.append(_failed(self.failures, _last_line(err)))
        return futures

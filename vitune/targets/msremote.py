"""MetaSchedule builder and runner for a device reached over TVM RPC (an ARM board, a remote GPU).

``RemoteBuilder`` compiles each scheduled candidate in this process (no process pool, as in
:mod:`vitune.targets.msinproc`) and links it into a shared library with the profile's cross
compiler. ``RemoteRunner`` keeps one RPC session (through the tracker or to the server, exactly as
:class:`vitune.targets.runner.RpcRunner` reaches the device for measurement), uploads each
library, times it on random inputs there and removes it. Every network step is bounded by the
profile's ``timeout_s``; a failure is that candidate's result (MetaSchedule skips it), and a lost
session is reopened for the next candidate.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.builder import PyBuilder
from tvm.s_tir.meta_schedule.runner import PyRunner, RunnerResult

from vitune.targets.msinproc import _Done, _failed, _last_line, build_each


@derived_object
class RemoteBuilder(PyBuilder):
    def __init__(self, profile, work_dir: str):
        from vitune.targets.compile import link_options

        super().__init__()
        self.profile = profile
        self._link = link_options(profile)  # a missing cross compiler fails here, once
        self.work_dir = Path(work_dir)
        self.built = 0
        self._counter = itertools.count()

    def _export(self, rt_mod) -> str:
        path = self.work_dir / f"candidate-{next(self._counter)}.so"
        rt_mod.export_library(str(path), **self._link)
        self.built += 1
        return str(path)

    def build(self, build_inputs):
        return build_each(build_inputs, self._export)


@derived_object
class RemoteRunner(PyRunner):
    def __init__(self, profile, number: int = 3, repeat: int = 1, min_repeat_ms: int = 20):
        super().__init__()
        from vitune.targets.runner import RpcRunner

        self.rpc = RpcRunner(profile)
        self.number, self.repeat, self.min_repeat_ms = number, repeat, min_repeat_ms
        self.measured = 0
        self.failures: dict[str, int] = {}  # error line → candidates that failed with it
        self._session = None

    def _time(self, item) -> list[float]:
        from tvm.s_tir.meta_schedule.runner.rpc_runner import default_alloc_argument

        bounded = self.rpc.bounded
        if self._session is None:
            self._session = self.rpc.session()
        sess = self._session
        local = Path(item.artifact_path)
        bounded(lambda: sess.upload(str(local)), f"uploading {local.name}")
        try:
            rlib = bounded(lambda: sess.load_module(local.name), f"loading {local.name} on the device")
            dev = sess.device(str(item.device_type), 0)
            (args,) = bounded(
                lambda: default_alloc_argument(sess, dev, [info.as_json() for info in item.args_info], 1),
                "allocating the arguments on the device",
            )
            evaluator = rlib.time_evaluator(rlib.entry_name, dev, number=self.number, repeat=self.repeat, min_repeat_ms=self.min_repeat_ms)
            return [float(c) for c in bounded(lambda: evaluator(*args).results, f"timing {local.name} on the device")]
        finally:
            try:
                sess.remove(local.name)
            except Exception:  # the session is gone; the next candidate reconnects
                self._session = None

    def close(self) -> None:
        """Give the device back (a tracker lends it to one session at a time)."""
        self._session = None

    def run(self, runner_inputs):
        futures = []
        for item in runner_inputs:
            try:
                futures.append(_Done(RunnerResult(self._time(item), None)))
                self.measured += 1
            except Exception as err:
                self._session = None  # reconnect for the next candidate
                futures.append(_failed(self.failures, _last_line(err)))
            finally:
                Path(item.artifact_path).unlink(missing_ok=True)
        return futures

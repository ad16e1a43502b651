"""MetaSchedule runner for a device reached over TVM RPC (an ARM board, a remote GPU).

Candidates are compiled and linked into shared libraries (with the profile's cross compiler) by
:class:`vitune.targets.msworker.WorkerBuilder` in its watched worker process. ``RemoteRunner``
keeps one RPC session (through the tracker or to the server, exactly as
:class:`vitune.targets.runner.RpcRunner` reaches the device for measurement), uploads each
library, times it on random inputs there and removes it. Every network step is bounded by the
profile's ``timeout_s``; a failure is that candidate's result (MetaSchedule skips it), and a lost
session is reopened for the next candidate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.runner import PyRunner, RunnerResult

from vitune.errors import short_reason
from vitune.targets.msworker import Done, failed


@derived_object
class RemoteRunner(PyRunner):
    def __init__(self, profile, number: int = 3, repeat: int = 1, min_repeat_ms: int = 20):
        super().__init__()
        from vitune.targets.runner import RpcRunner

        self.rpc = RpcRunner(profile)
        self.number, self.repeat, self.min_repeat_ms = number, repeat, min_repeat_ms
        self.measured = 0
        self.failures: dict[str, int] = {}  # error line → candidates that failed with it
        self._session: Any = None  # a tvm.rpc session, opened on first use

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
                futures.append(Done(RunnerResult(self._time(item), None)))
                self.measured += 1
            except Exception as err:
                self._session = None  # reconnect for the next candidate
                futures.append(failed(self.failures, short_reason(err)))
            finally:
                Path(item.artifact_path).unlink(missing_ok=True)
        return futures

"""Validated accuracy read beside the candidate's build.

On a CPU target, most of a trial's latency stage is the build (``torch.export``, the graph
rewrites, code generation of new kernels): Python and LLVM on one core, for 8 to 12 s a
DeiT-Tiny trial on a 2-core machine, while validated accuracy (PyTorch on every core) waited for
it. :class:`BackgroundAccuracy` reads the accuracy in a thread of its own from the moment the
candidate is compressed, on the cores the build leaves (PyTorch's threads less one), and:

* **stops between two batches once the candidate is timed** (:meth:`stop_for_timing`, called
  as the trial takes the host's exclusive lock) and stays stopped through the timing runs (the
  drift reference's, the candidate's, retries): a timed run sees a quiet machine, as before, and
  waits for a batch in flight once a trial, not before each of its timings;
* **reads what is left on every core** once the latency is known (:meth:`finish`), with early
  stopping from then on (the dominance test needs the candidate's latency, so shards read beside
  the build are never cut short: a candidate may be read in full where a sequential trial would
  have stopped it, never the reverse);
* reads **a copy** of the model: ``torch.export`` swaps a module's tensors for fake ones while it
  traces, so the build and the accuracy never share one.

Several vitune processes on one machine (workers) stay correct: while it reads, the thread holds
the host's shared lock with a descriptor of its own (``host_shared``), released while stopped, so
another process's timing waits for it as it waits for a build.

The accuracy is the same number either way: the same batches of the same split through the same
model (``tests/search/test_overlap.py``).
"""

from __future__ import annotations

import contextlib
import copy
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch


class _Cancelled(Exception):
    """Raised inside the reading thread to stop it between two batches."""


class BackgroundAccuracy:
    """``accuracy_in_shards(model, dataset, shards)`` started now in a thread of its own.

    ``host_shared``: a factory of the host's shared lock (:meth:`HostLock.shared
    <vitune.search.coordination.HostLock.shared>`), held while the thread reads; None when this
    process is alone on the machine. The thread reads on PyTorch's threads less one until
    :meth:`finish`, then on all of them."""

    def __init__(self, model: torch.nn.Module, dataset, shards: int,
                 host_shared: Callable[[], AbstractContextManager] | None = None):
        self._model = copy.deepcopy(model)
        self._dataset, self._shards, self._host_shared = dataset, shards, host_shared
        self._threads = torch.get_num_threads()
        self._cond = threading.Condition()
        self._timing = False  # stop_for_timing() was called and finish() not yet
        self._busy = False  # a batch is being read
        self._cancel = False
        self._finishing = False  # finish() was called: every core, early stopping on
        self._done = False
        self._hopeless: Callable[[float], bool] | None = None
        self._result: tuple[float, int, float] | None = None
        self._error: BaseException | None = None
        self._since = 0.0
        self.beside_s = 0.0  # time spent reading before finish() (beside the build)
        self.batches_beside = 0
        self._held: contextlib.ExitStack | None = None
        self._thread = threading.Thread(target=self._run, name="vitune-accuracy", daemon=True)
        self._thread.start()

    # -- the reading thread --------------------------------------------------------------------

    def _run(self) -> None:
        from vitune.data.splits import accuracy_in_shards

        try:
            self._result = accuracy_in_shards(self._model, self._dataset, self._shards,
                                              hopeless=self._is_hopeless, before_batch=self._gate)
        except _Cancelled:
            pass
        except BaseException as err:  # re-raised in the caller's thread by finish()
            self._error = err
        finally:
            self._release()
            torch.set_num_threads(self._threads)  # the process's count again (MKL's is process-wide)
            with self._cond:
                if self._busy and not self._finishing:
                    self.beside_s += time.perf_counter() - self._since
                self._busy, self._done = False, True
                self._cond.notify_all()

    def _is_hopeless(self, best_possible: float) -> bool:
        hopeless = self._hopeless
        return hopeless is not None and hopeless(best_possible)

    def _gate(self) -> None:
        """Before each batch: wait while stopped for timing (the host lock released), stop if cancelled."""
        with self._cond:
            if self._busy and not self._finishing:
                self.beside_s += time.perf_counter() - self._since
                self.batches_beside += 1
            self._busy = False
            self._cond.notify_all()
            if self._stopped() and not self._cancel:
                self._release()
                while self._stopped() and not self._cancel:
                    self._cond.wait()
            if self._cancel:
                raise _Cancelled
            self._busy = True
            finishing = self._finishing
        if self._held is None and self._host_shared is not None:
            self._held = contextlib.ExitStack()
            self._held.enter_context(self._host_shared())
        want = self._threads if finishing else max(1, self._threads - 1)
        if torch.get_num_threads() != want:
            torch.set_num_threads(want)
        self._since = time.perf_counter()

    def _stopped(self) -> bool:
        return self._timing and not self._finishing

    def _release(self) -> None:
        if self._held is not None:
            self._held.close()
            self._held = None

    # -- the trial's thread --------------------------------------------------------------------

    def stop_for_timing(self) -> None:
        """Read no batch from now until :meth:`finish` (the one in flight finishes first)."""
        with self._cond:
            self._timing = True
            while self._busy:
                self._cond.wait()

    def finish(self, hopeless: Callable[[float], bool] | None = None) -> tuple[float, int, float]:
        """Read the rest on every core, stopping early once ``hopeless(best_possible)``; returns
        :func:`~vitune.data.splits.accuracy_in_shards`'s ``(accuracy, seen, best_possible)`` and
        raises what the reading raised."""
        with self._cond:
            self._hopeless, self._finishing = hopeless, True
            self._cond.notify_all()
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def cancel(self) -> None:
        """Stop reading (between two batches) and wait for the thread. Idempotent."""
        with self._cond:
            self._cancel = True
            self._cond.notify_all()
        self._thread.join()

    @property
    def done(self) -> bool:
        return self._done

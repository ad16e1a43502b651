"""The TVM runtime's CPU thread pool, sized per target (TVM only: the tuning worker imports it
without torch)."""

from __future__ import annotations

import logging
import os

_SHORT: set[int] = set()  # thread counts use_threads has already warned about
# The process's CPU set when vitune loaded (taskset or a container may have narrowed it).
_CPUS = frozenset(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else frozenset()


def _unpin_caller() -> None:
    """Give the calling thread the process's CPU set back. TVM pins the thread that sizes its pool
    (it works as the pool's thread 0; with a pool of one thread it is pinned to one core), and
    every process started from it afterwards — the tuning worker, MetaSchedule's builders, a
    peer runtime's threads — would inherit that one core."""
    if _CPUS and os.sched_getaffinity(0) != _CPUS:
        os.sched_setaffinity(0, _CPUS)


def use_threads(threads: int, dev=None) -> int:
    """Run this OS thread's TVM CPU kernels on ``threads`` workers; returns how many it got (a pool
    never grows past the size it was created with: ``TVM_NUM_THREADS``, set by ``import vitune``).
    With ``dev``, only when it is the CPU (a GPU's kernels do not use the pool)."""
    import tvm

    in_use = tvm.get_global_func("runtime.NumThreads")  # (creating the pool, on first use)
    if dev is not None and dev.dlpack_device_type() != 1:  # 1: kDLCPU
        return int(in_use())
    if in_use() != threads:
        tvm.get_global_func("runtime.config_threadpool")(1, threads)  # 1: all cores, pinned
    _unpin_caller()
    got = int(in_use())
    if got < threads and threads not in _SHORT:
        _SHORT.add(threads)
        logging.getLogger(__name__).warning(
            "kernels run on %d threads, not the %d the target asks for: TVM's thread pool has %d "
            "(TVM_NUM_THREADS=%s, %d CPUs on this machine; a pool is sized once, at the first kernel)",
            got, threads, got, os.environ.get("TVM_NUM_THREADS", "unset"), os.cpu_count() or 1,
        )
    return got

"""The TVM runtime's CPU thread pool, sized per target (TVM only: the tuning worker imports it
without torch)."""

from __future__ import annotations

import logging
import os

_SHORT: set[int] = set()  # thread counts use_threads has already warned about


def use_threads(threads: int, dev=None) -> int:
    """Run this OS thread's TVM CPU kernels on ``threads`` workers; returns how many it got (a pool
    never grows past the size it was created with: ``TVM_NUM_THREADS``, set by ``import vitune``).
    With ``dev``, only when it is the CPU (a GPU's kernels do not use the pool)."""
    import tvm

    in_use = tvm.get_global_func("runtime.NumThreads")
    if dev is not None and dev.dlpack_device_type() != 1:  # 1: kDLCPU
        return int(in_use())
    if in_use() != threads:
        tvm.get_global_func("runtime.config_threadpool")(1, threads)  # 1: all cores, pinned
    got = int(in_use())
    if got < threads and threads not in _SHORT:
        _SHORT.add(threads)
        logging.getLogger(__name__).warning(
            "kernels run on %d threads, not the %d the target asks for: TVM's thread pool has %d "
            "(TVM_NUM_THREADS=%s, %d CPUs on this machine; a pool is sized once, at the first kernel)",
            got, threads, got, os.environ.get("TVM_NUM_THREADS", "unset"), os.cpu_count() or 1,
        )
    return got

"""A candidate build function for the tuning worker that hangs on one candidate and crashes the
worker on another (``tests/targets/test_msworker.py`` injects it as ``faulty_build:build``).

The candidates are counted in the file ``$VITUNE_FAULTY_COUNTER`` (a replaced worker starts with
no memory); ``$VITUNE_FAULTY_HANG`` and ``$VITUNE_FAULTY_CRASH`` are the 1-based counts that hang
and crash."""

import os
import signal
import time
from pathlib import Path

from vitune.targets.msworker import build_candidate


def build(mod, target):
    counter = Path(os.environ["VITUNE_FAULTY_COUNTER"])
    n = int(counter.read_text()) + 1 if counter.exists() else 1
    counter.write_text(str(n))
    if n == int(os.environ.get("VITUNE_FAULTY_HANG", "0")):
        time.sleep(3600)  # as LLVM's code generation did, stuck on one schedule
    if n == int(os.environ.get("VITUNE_FAULTY_CRASH", "0")):
        os.kill(os.getpid(), signal.SIGSEGV)
    return build_candidate(mod, target)


def broken(mod, target):
    """Every candidate fails to build (as when LLVM cannot generate code for the target)."""
    raise RuntimeError("LLVM ERROR: Cannot select: intrinsic %llvm.x86.avx512")

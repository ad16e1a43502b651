"""Sizing TVM's thread pool leaves the process's CPU set alone."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CHILD = """
import os, subprocess, sys
import vitune  # sets TVM_NUM_THREADS
from vitune.targets.threads import use_threads
before = os.sched_getaffinity(0)
use_threads(1)  # creates the pool (TVM_NUM_THREADS=1) and pins its thread 0, the caller
use_threads(2)
after = os.sched_getaffinity(0)
child = subprocess.run([sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"], capture_output=True, text=True, check=True)
print(sorted(before), sorted(after), child.stdout.strip())
"""


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs and Linux affinity")
def test_pinning_the_pool_does_not_pin_the_caller_nor_what_it_starts():
    """TVM pins the calling thread to one core when it sizes its pool; every process started
    afterwards (the tuning worker, MetaSchedule's builders, a peer runtime's threads) would inherit
    that one core. use_threads gives the caller its CPU set back."""
    env = dict(os.environ, TVM_NUM_THREADS="1")  # a pool of one thread: TVM pins the caller to one core
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120, check=True, env=env).stdout.split("] [")
    before, after, child = (part.strip("[] \n") for part in out)
    assert after == before and child == before and len(before.split(",")) >= 2, out

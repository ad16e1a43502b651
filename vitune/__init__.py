"""vitune: hardware-aware per-layer compression search for Vision Transformers.

Heavy dependencies (torch, tvm) are imported by the modules that need them, never here.
"""

import os

__version__ = "0.1.0"

# The TVM runtime sizes each OS thread's CPU pool once, on its first parallel kernel, from
# TVM_NUM_THREADS; unset, it takes half the logical CPUs on x86 (it assumes hyper-threads), which
# is one core on a 2-core machine. Let the pool have every CPU here; runners narrow it to their
# target's thread count (vitune.targets.threads.use_threads), which can only shrink a pool.
os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))

from vitune.errors import ConfigError, VituneError  # noqa: E402  (light, no heavy imports)

__all__ = ["__version__", "VituneError", "ConfigError"]

"""What TVM's and LLVM's C++ side prints to file descriptor 2, caught (no heavy imports)."""

from __future__ import annotations

import os
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class Captured:
    text: str = ""


@contextmanager
def captured_native_stderr():
    """Capture what native code writes to stderr inside the block; ``.text`` after it."""
    out = Captured()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            out.text = tmp.read().decode(errors="replace")

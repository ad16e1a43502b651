"""vitune: hardware-aware per-layer compression search for Vision Transformers.

Heavy dependencies (torch, tvm) are imported by the modules that need them, never here.
"""

__version__ = "0.1.0"

from vitune.errors import ConfigError, VituneError  # noqa: E402  (light, no heavy imports)

__all__ = ["__version__", "VituneError", "ConfigError"]

"""Compression transforms and the per-layer configuration record.

Public names: :class:`CompressionConfig`, :class:`LinearConfig` (light, no torch import) and
:func:`vitune.compression.pipeline.compress` (imports torch).
"""

from vitune.compression.config import PRECISIONS, CompressionConfig, LinearConfig

__all__ = ["CompressionConfig", "LinearConfig", "PRECISIONS"]

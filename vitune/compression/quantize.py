"""Weight quantization of linear layers.

Contract: ``quantize_linear(layer, precision)`` returns a module computing the same function
with weights stored in ``precision``:

* ``fp32`` — the layer unchanged;
* ``fp16`` — :class:`Fp16Linear` (half weights, half matmul);
* ``int8`` — :class:`Int8Linear` (symmetric per-output-channel int8 weights; the round-trip
  error of each weight is at most half a quantization step, ``max|w_row| / 254``).

A :class:`LowRankLinear` has both factors quantized.
"""

from __future__ import annotations

from torch import nn

from vitune.compression.config import PRECISIONS
from vitune.compression.modules import Fp16Linear, Int8Linear, LowRankLinear
from vitune.errors import ConfigError


def quantize_linear(layer: nn.Module, precision: str, where: str = "linear") -> nn.Module:
    if precision not in PRECISIONS:
        raise ConfigError(f"{where}: unsupported precision {precision!r} (expected one of {', '.join(PRECISIONS)})")
    if precision == "fp32":
        return layer
    if isinstance(layer, LowRankLinear):
        return LowRankLinear(
            quantize_linear(layer.first, precision, f"{where}.first"),
            quantize_linear(layer.second, precision, f"{where}.second"),
        )
    if not isinstance(layer, nn.Linear):
        raise ConfigError(f"{where}: cannot quantize {type(layer).__name__}; expected nn.Linear")
    return Fp16Linear(layer) if precision == "fp16" else Int8Linear.from_linear(layer)

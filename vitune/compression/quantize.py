"""Quantization of linear layers (the last transform, applied to the factors of low-rank layers).

Contract: ``quantize_linear(layer, precision)`` returns a module computing ``layer``'s function
with weights (and for ``w8a8`` activations) stored in ``precision``:

* ``fp32`` — the layer unchanged;
* ``fp16`` — :class:`Fp16Linear` (half weights, half matmul);
* ``int8`` — :class:`Int8Linear`, symmetric per output channel: each weight's round-trip error
  is at most half a step, ``max|w_row| / 254``;
* ``int4`` — :class:`Int4Linear`, symmetric per (output channel, group of
  ``int4_group_size`` inputs): error at most ``max|w_group| / 14``;
* ``w8a8`` — :class:`W8A8Linear`: ``int8`` weights plus an int8 activation with one scale per
  tensor, ``act_scale`` = (max |x| for ``minmax``, the ``act_percentile``-th percentile of |x|
  for ``percentile``) / 127 over the calibration inputs the layer receives at that point.

:func:`quantize_model` applies a configuration's precisions to a whole model, calibrating the
``w8a8`` scales in one pass over the calibration batch.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from vitune.compression.config import PRECISIONS
from vitune.compression.methods import CompressionMethods
from vitune.compression.modules import Fp16Linear, Int4Linear, Int8Linear, LowRankLinear, W8A8Linear
from vitune.errors import ConfigError


def act_scale(x: torch.Tensor, methods: CompressionMethods = CompressionMethods()) -> float:
    """The per-tensor int8 activation scale for calibration inputs ``x``."""
    a = x.detach().abs().reshape(-1).to(torch.float32).numpy()
    top = float(a.max()) if methods.act_calibration == "minmax" else float(np.percentile(a, methods.act_percentile))
    return max(top, 1e-8) / 127.0


def quantize_linear(
    layer: nn.Module,
    precision: str,
    where: str = "linear",
    methods: CompressionMethods = CompressionMethods(),
    scales: dict[str, float] | None = None,
) -> nn.Module:
    """Quantize one layer; ``scales`` maps ``where`` (and ``where.first``/``.second``) to ``w8a8`` scales."""
    if precision not in PRECISIONS:
        raise ConfigError(f"{where}: unsupported precision {precision!r} (expected one of {', '.join(PRECISIONS)})")
    if precision == "fp32":
        return layer
    if isinstance(layer, LowRankLinear):
        return LowRankLinear(
            quantize_linear(layer.first, precision, f"{where}.first", methods, scales),
            quantize_linear(layer.second, precision, f"{where}.second", methods, scales),
        )
    if not isinstance(layer, nn.Linear):
        raise ConfigError(f"{where}: cannot quantize {type(layer).__name__}; expected nn.Linear")
    if precision == "fp16":
        return Fp16Linear(layer)
    if precision == "int8":
        return Int8Linear.from_linear(layer)
    if precision == "int4":
        return Int4Linear.from_linear(layer, methods.int4_group_size)
    if not scales or where not in scales:
        raise ConfigError(f"{where}: w8a8 needs a calibrated activation scale (run quantize_model with calibration data)")
    return W8A8Linear.from_linear(layer, scales[where])


def _leaves(model: nn.Module, name: str) -> list[str]:
    layer = model.get_submodule(name)
    return [f"{name}.first", f"{name}.second"] if isinstance(layer, LowRankLinear) else [name]


def quantize_model(model: nn.Module, precisions: dict[str, str], methods: CompressionMethods, calib_x: torch.Tensor | None,
                   placeholder_scales: bool = False) -> None:
    """Replace each named linear layer of ``model`` in place by its quantized form.

    ``placeholder_scales``: ``w8a8`` layers get the activation scale 1/127 instead of one
    calibrated on ``calib_x`` (a structural candidate: the scale's value changes no kernel, and
    the calibration forward was the largest part of a DeiT-B structural build)."""
    from vitune.compression.calibrate import capture_inputs

    todo = {name: p for name, p in precisions.items() if p != "fp32"}
    scales: dict[str, float] = {}
    need = [leaf for name, p in todo.items() if p == "w8a8" for leaf in _leaves(model, name)]
    if need and placeholder_scales:
        scales = dict.fromkeys(need, 1.0 / 127.0)
    elif need:
        if calib_x is None:
            raise ConfigError("w8a8 needs calibration images, which were not given")
        inputs = capture_inputs(model, need, calib_x)
        scales = {leaf: act_scale(x, methods) for leaf, x in inputs.items()}
    for name, precision in todo.items():
        parent, _, leaf = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, leaf, quantize_linear(model.get_submodule(name), precision, name, methods, scales))

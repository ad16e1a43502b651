"""Drop-in replacements for ``nn.Linear`` produced by the transforms.

Each keeps ``in_features``/``out_features`` and exports through ``torch.export`` to plain
matmul/cast operations, so the TVM graph holds the real (smaller or lower-precision) tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LowRankLinear(nn.Module):
    """``y = second(first(x))`` with ``first: in → rank`` (no bias) and ``second: rank → out``.

    Two dense matmuls of shapes (in × r) and (r × out) replace one (in × out) matmul.
    ``first`` and ``second`` are ordinary linear modules, so they can be quantized in turn.
    """

    def __init__(self, first: nn.Module, second: nn.Module):
        super().__init__()
        self.first = first
        self.second = second
        self.in_features = int(first.in_features)
        self.out_features = int(second.out_features)
        self.rank = int(first.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, rank={self.rank}, out_features={self.out_features}"


def _as(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` in ``dtype``: itself where it is already (a ``.to`` that changes nothing still exports
    as a copy and a metadata check, hundreds of nodes in a quantized ViT's graph)."""
    return t if t.dtype == dtype else t.to(dtype)


class Int8Linear(nn.Module):
    """Weight-only int8: symmetric per-output-channel scales, dequantized inside the forward.

    ``weight_int8`` (int8, out × in) and ``scale`` (fp32, out) are what is stored and shipped
    (as frozen parameters, so exporters treat them as weights);
    the dequantize (cast × scale) sits right before the matmul in the exported graph.
    """

    def __init__(self, weight_int8: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        if weight_int8.dtype != torch.int8:
            raise TypeError("weight_int8 must be int8")
        self.out_features, self.in_features = (int(s) for s in weight_int8.shape)
        # Frozen parameters, not buffers: the TVM importer keeps parameters as graph inputs, so
        # the build sees (and ships) int8 weights instead of folding them into fp32 constants.
        self.weight_int8 = nn.Parameter(weight_int8.contiguous(), requires_grad=False)
        self.scale = nn.Parameter(scale.to(torch.float32).contiguous(), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().to(torch.float32).clone())

    @classmethod
    def from_linear(cls, layer: nn.Linear) -> "Int8Linear":
        w = layer.weight.detach().to(torch.float32)
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
        q = torch.clamp(torch.round(w / scale[:, None]), -127, 127).to(torch.int8)
        return cls(q, scale, layer.bias)

    def dequantized_weight(self) -> torch.Tensor:
        return self.weight_int8.to(torch.float32) * self.scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight_int8.to(x.dtype) * _as(self.scale[:, None], x.dtype)
        return F.linear(x, w, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, weight=int8 per-channel"


class Fp16Linear(nn.Module):
    """Half-precision weights and matmul; input cast to fp16, output cast back to fp32."""

    def __init__(self, layer: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = int(layer.in_features), int(layer.out_features)
        self.weight = nn.Parameter(layer.weight.detach().to(torch.float16).clone(), requires_grad=False)
        self.bias = (
            None if layer.bias is None else nn.Parameter(layer.bias.detach().to(torch.float16).clone(), requires_grad=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The bias is added after the cast back: TVM's importer gives the fp16 matmul an fp32 result.
        y = F.linear(x.to(torch.float16), self.weight).to(x.dtype)
        return y if self.bias is None else y + self.bias.to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, dtype=float16"


class Int4Linear(nn.Module):
    """Weight-only int4, symmetric, one fp32 scale per (output channel, group of inputs).

    Stored: ``packed`` (uint8, out × in_padded/2: two 4-bit codes per byte, code = q + 8 with
    q in [-8, 7]) and ``scale`` (fp32, out × groups). The input dimension is zero-padded to a
    multiple of ``group_size``. The forward unpacks with integer ops (and, floor-divide),
    dequantizes group-wise and runs one fp32 matmul: the exported graph ships the packed bytes.
    """

    def __init__(self, packed: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, in_features: int, group_size: int):
        super().__init__()
        if packed.dtype != torch.uint8:
            raise TypeError("packed must be uint8")
        self.out_features, self.in_features, self.group_size = int(packed.shape[0]), int(in_features), int(group_size)
        self.groups = int(scale.shape[1])
        self.packed = nn.Parameter(packed.contiguous(), requires_grad=False)
        self.scale = nn.Parameter(scale.to(torch.float32).contiguous(), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().to(torch.float32).clone(), requires_grad=False)

    @classmethod
    def from_linear(cls, layer: nn.Linear, group_size: int) -> "Int4Linear":
        w = layer.weight.detach().to(torch.float32)
        out_f, in_f = w.shape
        groups = -(-in_f // group_size)
        padded = torch.zeros(out_f, groups * group_size)
        padded[:, :in_f] = w
        g = padded.reshape(out_f, groups, group_size)
        scale = g.abs().amax(dim=2).clamp(min=1e-12) / 7.0
        q = torch.clamp(torch.round(g / scale[:, :, None]), -8, 7).reshape(out_f, -1).to(torch.int16) + 8
        packed = (q[:, 0::2] + 16 * q[:, 1::2]).to(torch.uint8)
        return cls(packed, scale, layer.bias, in_f, group_size)

    def codes(self) -> torch.Tensor:
        """The signed int4 values q (int32, out × in_padded)."""
        p = self.packed.to(torch.int32)
        lo = torch.bitwise_and(p, 15)
        hi = torch.div(p, 16, rounding_mode="floor")
        return torch.stack([lo, hi], dim=-1).reshape(self.out_features, -1) - 8

    def dequantized_weight(self) -> torch.Tensor:
        q = self.codes().to(torch.float32).reshape(self.out_features, self.groups, self.group_size)
        return (q * self.scale[:, :, None]).reshape(self.out_features, -1)[:, : self.in_features]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantized_weight().to(x.dtype), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, weight=int4 group={self.group_size}"


def exact_integer_matmul(xq: torch.Tensor, weight_int8: torch.Tensor) -> torch.Tensor:
    """``xq @ weight_int8.T`` for integer-valued ``xq`` in [-127, 127], exactly as an int32 matmul
    gives it (as float32: the int32 sum converted, rounding as that conversion rounds), through
    BLAS. PyTorch's CPU matmul on int32 has no BLAS kernel: it made reading a W8A8 candidate's
    accuracy on deit_tiny at 224 px several times slower than the fp32 model's.

    Exact because every partial sum is an integer whose magnitude is at most
    ``Σ|x_i|·max|w|`` (whatever order BLAS adds in): below 2**24, float32 holds each one
    exactly; above it, the matmul runs in float64 (exact to 2**53, which an int8 × int8 product
    over any real layer width cannot reach)."""
    x = xq.to(torch.float32)
    w = weight_int8.to(torch.float32)
    w_max = float(w.abs().max()) if w.numel() else 0.0
    if 127.0 * x.shape[-1] * w_max < 2.0**24 or float(x.abs().sum(dim=-1).max()) * w_max < 2.0**24:
        return torch.matmul(x, w.t())  # (the first test covers every layer up to 1040 inputs wide)
    return torch.matmul(x.to(torch.float64), w.to(torch.float64).t()).to(torch.float32)


class W8A8Linear(nn.Module):
    """int8 weights (per output channel) × int8 activations (one calibrated scale per tensor).

    ``y = (round(x / s_x) ⋅ W_q) · s_x · s_w + b`` with the product accumulated in int32: the
    exported graph quantizes x to int8, runs an integer matmul (see
    :func:`vitune.targets.compile.export_relax`, which makes it an int8 × int8 → int32 matmul in
    TVM), then dequantizes. Inputs beyond ±127 s_x are clipped (that is what calibration tunes).

    ``1 / s_x`` is a one-element weight (``inv_act_scale``), not a constant of the graph: a
    constant would make each layer's quantize kernel (fused into the layer norm or matmul before
    it) a workload of its own, tuned anew for every calibration, where as a weight every layer of
    the same shape shares one.
    """

    def __init__(self, weight_int8: torch.Tensor, w_scale: torch.Tensor, act_scale: float, bias: torch.Tensor | None):
        super().__init__()
        if weight_int8.dtype != torch.int8:
            raise TypeError("weight_int8 must be int8")
        if not act_scale > 0:
            raise ValueError(f"act_scale must be > 0, got {act_scale}")
        self.out_features, self.in_features = (int(s) for s in weight_int8.shape)
        self.weight_int8 = nn.Parameter(weight_int8.contiguous(), requires_grad=False)
        self.act_scale = float(act_scale)
        self.inv_act_scale = nn.Parameter(torch.tensor([1.0 / self.act_scale], dtype=torch.float32), requires_grad=False)
        # folded output scale s_x · s_w (one per output channel)
        self.out_scale = nn.Parameter((w_scale.to(torch.float64) * self.act_scale).to(torch.float32), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().to(torch.float32).clone(), requires_grad=False)

    @classmethod
    def from_linear(cls, layer: nn.Linear, act_scale: float) -> "W8A8Linear":
        q = Int8Linear.from_linear(layer)
        return cls(q.weight_int8.data, q.scale.data, act_scale, layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xq = torch.clamp(torch.round(x * _as(self.inv_act_scale, x.dtype)), -127.0, 127.0)
        if torch.compiler.is_compiling() or torch.compiler.is_exporting():
            # what the exported graph holds: int8 activations, an int32 matmul (made int8 × int8 →
            # int32 in TVM), then the dequantize
            acc = torch.matmul(xq.to(torch.int8).to(torch.int32), self.weight_int8.to(torch.int32).t())
        else:
            acc = exact_integer_matmul(xq, self.weight_int8)
        y = acc.to(x.dtype) * _as(self.out_scale, x.dtype)
        return y if self.bias is None else y + _as(self.bias, x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, w8a8 act_scale={self.act_scale:.4g}"

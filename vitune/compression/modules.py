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
        w = self.weight_int8.to(x.dtype) * self.scale[:, None].to(x.dtype)
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

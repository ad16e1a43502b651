"""Low-rank approximation of linear layers by truncated SVD.

Contract: ``factorize(layer, rank)`` returns a :class:`LowRankLinear` whose two factors multiply
to the best rank-``rank`` approximation of ``W`` in Frobenius norm (Eckart–Young); an exactly
low-rank ``W`` is recovered up to float rounding. The singular values are split evenly
(√S on each side) so both factors are well scaled for later quantization. The bias stays on
the second factor. The SVD runs in float64.
"""

from __future__ import annotations

import torch
from torch import nn

from vitune.compression.modules import LowRankLinear
from vitune.errors import ConfigError


def factorize(layer: nn.Linear, rank: int, where: str = "linear") -> LowRankLinear:
    if not isinstance(layer, nn.Linear):
        raise ConfigError(f"{where}: low-rank needs a plain nn.Linear, found {type(layer).__name__}")
    out_f, in_f = layer.weight.shape
    if not 1 <= rank <= min(out_f, in_f):
        raise ConfigError(f"{where}: rank {rank} is impossible for a {out_f}x{in_f} layer (1..{min(out_f, in_f)})")
    w = layer.weight.detach().to(torch.float64)
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    root = s[:rank].sqrt()
    first = nn.Linear(in_f, rank, bias=False)
    second = nn.Linear(rank, out_f, bias=layer.bias is not None)
    dtype = layer.weight.dtype
    with torch.no_grad():
        first.weight.copy_((root[:, None] * vh[:rank]).to(dtype))
        second.weight.copy_((u[:, :rank] * root[None, :]).to(dtype))
        if layer.bias is not None:
            second.bias.copy_(layer.bias.detach())
    return LowRankLinear(first, second)

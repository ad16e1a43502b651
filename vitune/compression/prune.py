"""Structured pruning of attention heads and MLP hidden neurons, by weight magnitude.

Contract: takes a block's ``attn`` (timm ``Attention``) or ``mlp`` (timm ``Mlp``) and a ratio in
[0, 1); removes ``round(ratio × units)`` units (at least one is kept) *physically*: the new
linear layers are smaller dense tensors, never masks. The kept units keep their original
order, and the pruned module equals the original restricted to the kept units.

Importance of a unit is the product of the L2 norms of the weights that write it and read it
(qkv rows × proj columns for a head; fc1 row × fc2 column for a neuron).
"""

from __future__ import annotations

import torch
from torch import nn

from vitune.errors import ConfigError
from vitune.models.layers import kept_count


def _sliced_linear(layer: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    w = layer.weight.detach()
    b = None if layer.bias is None else layer.bias.detach()
    if rows is not None:
        w = w[rows]
        b = None if b is None else b[rows]
    if cols is not None:
        w = w[:, cols]
    new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, dtype=w.dtype, device=w.device)
    with torch.no_grad():
        new.weight.copy_(w)
        if b is not None:
            new.bias.copy_(b)
    return new


def _require_linear(layer: nn.Module, where: str) -> nn.Linear:
    if not isinstance(layer, nn.Linear):
        raise ConfigError(f"{where}: can only prune a plain nn.Linear, found {type(layer).__name__}")
    return layer


def head_importance(attn: nn.Module) -> torch.Tensor:
    """One score per head: ‖qkv rows of the head‖₂ × ‖proj columns of the head‖₂."""
    h, d = attn.num_heads, attn.head_dim
    qkv = attn.qkv.weight.detach().reshape(3, h, d, -1)
    proj = attn.proj.weight.detach().reshape(-1, h, d)
    return qkv.pow(2).sum(dim=(0, 2, 3)).sqrt() * proj.pow(2).sum(dim=(0, 2)).sqrt()


def prune_heads(attn: nn.Module, ratio: float, where: str = "attn") -> list[int]:
    """Remove the least important share ``ratio`` of heads in place; return the kept head indices."""
    _require_linear(attn.qkv, f"{where}.qkv")
    _require_linear(attn.proj, f"{where}.proj")
    if getattr(attn, "gate", None) is not None:
        raise ConfigError(f"{where}: head pruning of gated attention is not supported")
    h, d = int(attn.num_heads), int(attn.head_dim)
    keep_n = kept_count(h, ratio)
    if keep_n == h:
        return list(range(h))
    keep = torch.sort(torch.topk(head_importance(attn), keep_n).indices).values
    within = (keep[:, None] * d + torch.arange(d)[None, :]).reshape(-1)  # columns of the kept heads
    rows = torch.cat([within + part * h * d for part in range(3)])  # q, k and v rows
    attn.qkv = _sliced_linear(attn.qkv, rows=rows)
    attn.proj = _sliced_linear(attn.proj, cols=within)
    if isinstance(getattr(attn, "norm", None), nn.LayerNorm):
        attn.norm = _sliced_layernorm(attn.norm, within)
    attn.num_heads = keep_n
    attn.attn_dim = keep_n * d
    return keep.tolist()


def neuron_importance(mlp: nn.Module) -> torch.Tensor:
    """One score per hidden neuron: ‖fc1 row‖₂ × ‖fc2 column‖₂."""
    return mlp.fc1.weight.detach().norm(dim=1) * mlp.fc2.weight.detach().norm(dim=0)


def prune_mlp(mlp: nn.Module, ratio: float, where: str = "mlp") -> list[int]:
    """Remove the least important share ``ratio`` of hidden neurons in place; return kept indices."""
    fc1 = _require_linear(mlp.fc1, f"{where}.fc1")
    fc2 = _require_linear(mlp.fc2, f"{where}.fc2")
    if fc1.out_features != fc2.in_features:
        raise ConfigError(f"{where}: fc1 outputs ({fc1.out_features}) != fc2 inputs ({fc2.in_features}); gated MLPs are not supported")
    hidden = fc1.out_features
    keep_n = kept_count(hidden, ratio)
    if keep_n == hidden:
        return list(range(hidden))
    keep = torch.sort(torch.topk(neuron_importance(mlp), keep_n).indices).values
    mlp.fc1 = _sliced_linear(fc1, rows=keep)
    mlp.fc2 = _sliced_linear(fc2, cols=keep)
    if isinstance(getattr(mlp, "norm", None), nn.LayerNorm):
        mlp.norm = _sliced_layernorm(mlp.norm, keep)
    return keep.tolist()


def _sliced_layernorm(norm: nn.LayerNorm, keep: torch.Tensor) -> nn.LayerNorm:
    new = nn.LayerNorm(len(keep), eps=norm.eps, elementwise_affine=norm.elementwise_affine)
    if norm.elementwise_affine:
        with torch.no_grad():
            new.weight.copy_(norm.weight[keep])
            if norm.bias is not None:
                new.bias.copy_(norm.bias[keep])
    return new

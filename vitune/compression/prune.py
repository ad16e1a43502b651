"""Structured pruning of attention heads and MLP hidden neurons.

Contract: takes a block's ``attn`` (timm ``Attention``) or ``mlp`` (timm ``Mlp``) and a ratio in
[0, 1); removes ``round(ratio × units)`` units (at least one is kept) *physically*: the new
linear layers are smaller dense tensors, never masks. The kept units keep their original
order, and the pruned module equals the original restricted to the kept units.

Importance criteria (``CompressionMethods.prune_criterion``), one score per unit, computed on
the *original* model (scores of all blocks come from one pass over the calibration batch):

* ``magnitude`` — ‖weights writing the unit‖₂ × ‖weights reading it‖₂ (qkv rows × proj
  columns for a head; fc1 row × fc2 column for a neuron); needs no data;
* ``activation`` — mean over calibration tokens of the unit's output norm (a head's slice of
  the proj input; a neuron's GELU output, the fc2 input) × ‖weights reading it‖₂ — the size of
  what the unit contributes downstream;
* ``taylor`` — first-order Taylor estimate of the loss change when the unit is removed:
  mean over calibration images of |Σ_{tokens, unit dims} a ⊙ ∂L/∂a| with L the cross-entropy
  on the calibration labels (Molchanov et al., 2019).
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


def prune_heads(attn: nn.Module, ratio: float, where: str = "attn", scores: torch.Tensor | None = None) -> list[int]:
    """Remove the least important share ``ratio`` of heads in place; return the kept head indices.

    ``scores``: one importance per head (default: ``magnitude``).
    """
    _require_linear(attn.qkv, f"{where}.qkv")
    _require_linear(attn.proj, f"{where}.proj")
    if getattr(attn, "gate", None) is not None:
        raise ConfigError(f"{where}: head pruning of gated attention is not supported")
    h, d = int(attn.num_heads), int(attn.head_dim)
    keep_n = kept_count(h, ratio)
    if keep_n == h:
        return list(range(h))
    scores = head_importance(attn) if scores is None else scores
    if scores.shape != (h,):
        raise ConfigError(f"{where}: expected {h} head scores, got shape {tuple(scores.shape)}")
    keep = torch.sort(torch.topk(scores, keep_n).indices).values
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


def prune_mlp(mlp: nn.Module, ratio: float, where: str = "mlp", scores: torch.Tensor | None = None) -> list[int]:
    """Remove the least important share ``ratio`` of hidden neurons in place; return kept indices.

    ``scores``: one importance per neuron (default: ``magnitude``).
    """
    fc1 = _require_linear(mlp.fc1, f"{where}.fc1")
    fc2 = _require_linear(mlp.fc2, f"{where}.fc2")
    if fc1.out_features != fc2.in_features:
        raise ConfigError(f"{where}: fc1 outputs ({fc1.out_features}) != fc2 inputs ({fc2.in_features}); gated MLPs are not supported")
    hidden = fc1.out_features
    keep_n = kept_count(hidden, ratio)
    if keep_n == hidden:
        return list(range(hidden))
    scores = neuron_importance(mlp) if scores is None else scores
    if scores.shape != (hidden,):
        raise ConfigError(f"{where}: expected {hidden} neuron scores, got shape {tuple(scores.shape)}")
    keep = torch.sort(torch.topk(scores, keep_n).indices).values
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


def unit_scores(model: nn.Module, layout, criterion: str, x: torch.Tensor | None = None, y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Importance of every head and MLP neuron of ``model``: ``{unit name: scores}``.

    ``x``, ``y``: the calibration batch (needed by ``activation`` and ``taylor``).
    """
    import torch.nn.functional as F

    if criterion == "magnitude":
        out = {h.name: head_importance(model.get_submodule(h.name)) for h in layout.heads}
        out.update({m.name: neuron_importance(model.get_submodule(m.name)) for m in layout.mlps})
        return out
    if criterion not in ("activation", "taylor"):
        raise ConfigError(f"unknown pruning criterion {criterion!r} (expected magnitude, activation, taylor)")
    if x is None or (criterion == "taylor" and y is None):
        raise ConfigError(f"pruning criterion {criterion!r} needs the calibration batch")
    # the tensors that carry each unit: proj input (heads), fc2 input (neurons)
    readers = {h.name: f"{h.name}.proj" for h in layout.heads}
    readers.update({m.name: f"{m.name}.fc2" for m in layout.mlps})
    acts: dict[str, list[torch.Tensor]] = {k: [] for k in readers}
    handles = []

    def hook_for(unit):
        def hook(_module, args):
            a = args[0]
            if criterion == "taylor":
                a.retain_grad()
            acts[unit].append(a)

        return hook

    for unit, path in readers.items():
        handles.append(model.get_submodule(path).register_forward_pre_hook(hook_for(unit)))
    was_training = model.training
    model.eval()
    sums: dict[str, torch.Tensor] = {}
    try:
        for start in range(0, len(x), 64):
            for v in acts.values():
                v.clear()
            xb = x[start : start + 64]
            with torch.set_grad_enabled(criterion == "taylor"):
                logits = model(xb)
                if criterion == "taylor":
                    model.zero_grad(set_to_none=True)
                    F.cross_entropy(logits, y[start : start + 64], reduction="sum").backward()
            for unit, seen in acts.items():
                a = seen[-1]
                groups = _unit_groups(model, layout, unit)
                a_g = a.detach().reshape(a.shape[0], -1, groups, a.shape[-1] // groups)  # B, T, units, dims
                if criterion == "activation":
                    score = a_g.norm(dim=-1).mean(dim=1).sum(dim=0)  # Σ over images of the token mean
                else:
                    g_g = a.grad.detach().reshape(a_g.shape)
                    score = (a_g * g_g).sum(dim=(1, 3)).abs().sum(dim=0)
                sums[unit] = sums.get(unit, 0) + score
    finally:
        for h in handles:
            h.remove()
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    out = {}
    for unit, total in sums.items():
        score = total / len(x)
        if criterion == "activation":
            score = score * _reader_norms(model, layout, unit)
        out[unit] = score
    return out


def _unit_groups(model: nn.Module, layout, unit: str) -> int:
    if any(h.name == unit for h in layout.heads):
        return int(model.get_submodule(unit).num_heads)
    return int(model.get_submodule(unit).fc2.in_features)


def _reader_norms(model: nn.Module, layout, unit: str) -> torch.Tensor:
    module = model.get_submodule(unit)
    if any(h.name == unit for h in layout.heads):
        h, d = int(module.num_heads), int(module.head_dim)
        return module.proj.weight.detach().reshape(-1, h, d).pow(2).sum(dim=(0, 2)).sqrt()
    return module.fc2.weight.detach().norm(dim=0)

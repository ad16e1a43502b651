"""Layer discovery: the compressible units of a timm Vision Transformer.

For every transformer block ``blocks.{i}`` of a timm ``VisionTransformer`` (ViT, DeiT, ...):

* four linear layers, ``blocks.{i}.attn.qkv``, ``blocks.{i}.attn.proj``, ``blocks.{i}.mlp.fc1``
  and ``blocks.{i}.mlp.fc2`` (precision and low-rank rank are set per linear layer);
* the attention heads, unit ``blocks.{i}.attn`` (a share of heads can be pruned);
* the MLP hidden width, unit ``blocks.{i}.mlp`` (a share of hidden neurons can be pruned).

Names are the module paths in the model, so they are stable and read like the model.
Discovery only reads attributes; it works on any object shaped like a timm ViT.
"""

from __future__ import annotations

from dataclasses import dataclass

from vitune.errors import ConfigError

LINEAR_ROLES = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")


@dataclass(frozen=True)
class LinearUnit:
    """A linear layer ``y = x Wᵀ + b`` with ``W`` of shape (out_features, in_features)."""

    name: str
    block: int
    role: str  # one of LINEAR_ROLES
    in_features: int
    out_features: int


@dataclass(frozen=True)
class HeadUnit:
    """The attention heads of one block; pruning removes whole heads."""

    name: str
    block: int
    num_heads: int
    head_dim: int


@dataclass(frozen=True)
class MlpUnit:
    """The hidden neurons of one block's MLP; pruning removes fc1 outputs with fc2 inputs."""

    name: str
    block: int
    hidden: int


def kept_count(total: int, ratio: float) -> int:
    """Units kept when pruning ``ratio`` of ``total``: rounded, and never fewer than one."""
    return max(1, total - int(round(ratio * total)))


@dataclass(frozen=True)
class ModelLayout:
    """Every compressible unit of a model, in model order."""

    linears: tuple[LinearUnit, ...]
    heads: tuple[HeadUnit, ...]
    mlps: tuple[MlpUnit, ...]

    @property
    def depth(self) -> int:
        return len(self.heads)

    def unit_names(self) -> list[str]:
        return [*(u.name for u in self.linears), *(u.name for u in self.heads), *(u.name for u in self.mlps)]

    def linear(self, name: str) -> LinearUnit:
        for unit in self.linears:
            if unit.name == name:
                return unit
        raise ConfigError(f"unknown linear layer {name!r}: {self._hint('linear')}")

    def head(self, name: str) -> HeadUnit:
        for unit in self.heads:
            if unit.name == name:
                return unit
        raise ConfigError(f"unknown attention unit {name!r}: {self._hint('heads')}")

    def mlp(self, name: str) -> MlpUnit:
        for unit in self.mlps:
            if unit.name == name:
                return unit
        raise ConfigError(f"unknown MLP unit {name!r}: {self._hint('mlp')}")

    def _hint(self, kind: str) -> str:
        last = self.depth - 1
        example = {"linear": "blocks.0.mlp.fc1", "heads": "blocks.0.attn", "mlp": "blocks.0.mlp"}[kind]
        return f"the model has blocks 0..{last}; names look like {example!r}"


def discover(model) -> ModelLayout:
    """List the compressible units of a timm ViT (anything with ``blocks[i].attn.qkv`` etc.)."""
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise ConfigError(
            f"{type(model).__name__} has no 'blocks': vitune compresses timm VisionTransformer-style models"
        )
    linears: list[LinearUnit] = []
    heads: list[HeadUnit] = []
    mlps: list[MlpUnit] = []
    for i, block in enumerate(blocks):
        attn, mlp = getattr(block, "attn", None), getattr(block, "mlp", None)
        if attn is None or mlp is None or not hasattr(attn, "qkv") or not hasattr(mlp, "fc1"):
            raise ConfigError(
                f"blocks.{i} ({type(block).__name__}) is not a ViT block with attn.qkv/attn.proj/mlp.fc1/mlp.fc2"
            )
        for role in LINEAR_ROLES:
            part, leaf = role.split(".")
            layer = getattr(getattr(block, part), leaf)
            in_f, out_f = _linear_shape(layer)
            linears.append(LinearUnit(f"blocks.{i}.{role}", i, role, in_f, out_f))
        heads.append(HeadUnit(f"blocks.{i}.attn", i, int(attn.num_heads), int(attn.head_dim)))
        mlps.append(MlpUnit(f"blocks.{i}.mlp", i, _linear_shape(mlp.fc1)[1]))
    return ModelLayout(tuple(linears), tuple(heads), tuple(mlps))


def _linear_shape(layer) -> tuple[int, int]:
    if hasattr(layer, "in_features") and hasattr(layer, "out_features"):
        return int(layer.in_features), int(layer.out_features)
    raise ConfigError(f"{type(layer).__name__} is not a linear layer (no in_features/out_features)")

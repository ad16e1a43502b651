"""The per-layer compression configuration: an immutable, typed, JSON-round-trippable record.

A configuration says, for each compressible unit of a model (see :mod:`vitune.models.layers`):

* ``linear[name]`` — ``precision`` and low-rank ``rank`` (``None`` keeps the full matrix; ``r``
  replaces W by two matmuls of rank r). Precisions: ``fp32``; ``fp16`` (half weights and
  matmul); ``int8`` (weight-only, per output channel); ``int4`` (weight-only, group-wise along
  the input, two values per byte); ``w8a8`` (int8 weights per channel and int8 activations per
  tensor, int8 × int8 → int32 matmul, calibrated scales);
* ``prune_heads[name]`` — share of attention heads removed from a block, in [0, 1);
* ``prune_mlp[name]`` — share of MLP hidden neurons removed from a block, in [0, 1);
* ``distill_steps`` — knowledge-distillation recovery steps (teacher: the original model);
* ``methods`` — *how* the transforms work (:class:`~vitune.compression.methods.CompressionMethods`).

Units not named keep their original form. Transforms compose in a fixed order:
prune → low-rank → distill → quantize (the factors of a low-rank layer are quantized, and a
``w8a8`` layer's activation scales are calibrated on the model as it is at that point).
A rank is checked against the layer's shape *after* pruning.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from vitune.compression.methods import CompressionMethods
from vitune.errors import ConfigError
from vitune.tables import Table, check_int, check_prune_ratio

PRECISIONS = ("fp32", "fp16", "int8", "int4", "w8a8")


@dataclass(frozen=True)
class LinearConfig:
    """What happens to one linear layer."""

    precision: str = "fp32"  # weight precision, one of PRECISIONS
    rank: int | None = None  # low-rank rank; None keeps the full-rank weight

    @property
    def is_identity(self) -> bool:
        return self.precision == "fp32" and self.rank is None

    def to_dict(self) -> dict[str, Any]:
        return {"precision": self.precision, "rank": self.rank}


def _frozen(mapping: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(mapping.items()))


@dataclass(frozen=True)
class CompressionConfig:
    """Per-layer configuration. Build with :meth:`make` or :meth:`from_dict`; never mutated."""

    linear_items: tuple[tuple[str, LinearConfig], ...] = ()
    prune_heads_items: tuple[tuple[str, float], ...] = ()
    prune_mlp_items: tuple[tuple[str, float], ...] = ()
    distill_steps: int = 0
    methods: CompressionMethods = CompressionMethods()
    _cache: dict = field(default_factory=dict, init=False, compare=False, hash=False, repr=False)  # a copy (dataclasses.replace) starts empty

    # -- construction -------------------------------------------------------------------
    @classmethod
    def make(
        cls,
        linear: Mapping[str, LinearConfig] | None = None,
        prune_heads: Mapping[str, float] | None = None,
        prune_mlp: Mapping[str, float] | None = None,
        distill_steps: int = 0,
        methods: CompressionMethods | None = None,
    ) -> "CompressionConfig":
        """Build a config, dropping entries that change nothing (fp32 full rank, ratio 0)."""
        linear = {k: v for k, v in (linear or {}).items() if not v.is_identity}
        heads = {k: float(v) for k, v in (prune_heads or {}).items() if float(v) != 0.0}
        mlp = {k: float(v) for k, v in (prune_mlp or {}).items() if float(v) != 0.0}
        for name, spec in linear.items():
            if not isinstance(spec, LinearConfig):
                raise ConfigError(f"linear[{name!r}] must be a LinearConfig, got {type(spec).__name__}")
        return cls(_frozen(linear), _frozen(heads), _frozen(mlp), int(distill_steps), methods or CompressionMethods())

    def replace(self, **changes) -> "CompressionConfig":
        """A copy with some of ``linear``, ``prune_heads``, ``prune_mlp``, ``distill_steps``, ``methods`` changed."""
        current = dict(
            linear=self.linear, prune_heads=self.prune_heads, prune_mlp=self.prune_mlp,
            distill_steps=self.distill_steps, methods=self.methods,
        )
        unknown = set(changes) - set(current)
        if unknown:
            raise TypeError(f"unknown field {sorted(unknown)[0]!r}")
        current.update(changes)
        return CompressionConfig.make(**current)

    @classmethod
    def identity(cls) -> "CompressionConfig":
        """The uncompressed model."""
        return cls()

    # -- access ---------------------------------------------------------------------------
    @property
    def linear(self) -> dict[str, LinearConfig]:
        return dict(self.linear_items)

    @property
    def prune_heads(self) -> dict[str, float]:
        return dict(self.prune_heads_items)

    @property
    def prune_mlp(self) -> dict[str, float]:
        return dict(self.prune_mlp_items)

    def linear_for(self, name: str) -> LinearConfig:
        return self.linear.get(name, LinearConfig())

    @property
    def is_identity(self) -> bool:
        return not (self.linear_items or self.prune_heads_items or self.prune_mlp_items or self.distill_steps)

    # -- JSON -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "linear": {k: v.to_dict() for k, v in self.linear_items},
            "prune_heads": dict(self.prune_heads_items),
            "prune_mlp": dict(self.prune_mlp_items),
            "distill_steps": self.distill_steps,
            "methods": self.methods.to_dict(),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @property
    def key(self) -> str:
        """A short stable hash of the configuration (same config → same key, across processes)."""
        if "key" not in self._cache:
            self._cache["key"] = hashlib.sha256(self.to_json().encode()).hexdigest()[:16]
        return self._cache["key"]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "config") -> "CompressionConfig":
        """Parse a dict as written by :meth:`to_dict`; errors name ``where`` and the key."""
        table = Table(data, where, ("linear", "prune_heads", "prune_mlp", "distill_steps", "methods"), kind="an object")
        linear: dict[str, LinearConfig] = {}
        layers = table.table("linear")
        for name in layers.data:
            spec = Table(layers.data[name], f"{layers.where}[{name!r}]", ("precision", "rank"), kind="an object")
            precision, rank = spec.get("precision", "fp32"), spec.get("rank")
            if not isinstance(precision, str):
                raise spec.fail("precision", "a string")
            if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int)):
                raise spec.fail("rank", "an integer or null")
            linear[name] = LinearConfig(precision, rank)
        heads, mlp = ({k: check_prune_ratio(v, f"{t.where}[{k!r}]") for k, v in t.data.items()}
                      for t in (table.table("prune_heads"), table.table("prune_mlp")))
        steps = check_int(data.get("distill_steps", 0), table.at("distill_steps"))
        # a configuration is recorded by vitune (a trial, an export): a [compression] setting it
        # lacks was added after it was made, and reads as what vitune did before the setting existed
        recorded = data.get("methods", {})
        methods = CompressionMethods.from_dict(
            CompressionMethods.as_recorded(recorded) if isinstance(recorded, Mapping) else recorded, f"{where}.methods")
        return cls.make(linear, heads, mlp, steps, methods)

    @classmethod
    def from_json(cls, text: str, where: str = "config") -> "CompressionConfig":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{where}: not valid JSON ({err})") from None
        return cls.from_dict(data, where)

    # -- validation -----------------------------------------------------------------------
    def validate(self, layout) -> "CompressionConfig":
        """Check every entry against a :class:`~vitune.models.layers.ModelLayout`; return self.

        Raises :class:`ConfigError` naming the layer and the value for an unknown layer, an
        unsupported precision, a prune ratio outside [0, 1), or a rank the (pruned) layer
        cannot have.
        """
        from vitune.models.layers import kept_count

        heads, mlp = self.prune_heads, self.prune_mlp
        for name, ratio in heads.items():
            layout.head(name)
            check_prune_ratio(ratio, f"prune_heads[{name!r}]")
        for name, ratio in mlp.items():
            layout.mlp(name)
            check_prune_ratio(ratio, f"prune_mlp[{name!r}]")
        for name, spec in self.linear_items:
            unit = layout.linear(name)
            if spec.precision not in PRECISIONS:
                raise ConfigError(
                    f"{name}: unsupported precision {spec.precision!r} (expected one of {', '.join(PRECISIONS)})"
                )
            if spec.rank is None:
                continue
            in_f, out_f = unit.in_features, unit.out_features
            block = f"blocks.{unit.block}"
            if unit.role in ("attn.qkv", "attn.proj") and f"{block}.attn" in heads:
                h = layout.head(f"{block}.attn")
                width = kept_count(h.num_heads, heads[f"{block}.attn"]) * h.head_dim
                out_f, in_f = (3 * width, in_f) if unit.role == "attn.qkv" else (out_f, width)
            if unit.role in ("mlp.fc1", "mlp.fc2") and f"{block}.mlp" in mlp:
                width = kept_count(layout.mlp(f"{block}.mlp").hidden, mlp[f"{block}.mlp"])
                out_f, in_f = (width, in_f) if unit.role == "mlp.fc1" else (out_f, width)
            largest = min(in_f, out_f)
            if spec.rank < 1 or spec.rank > largest:
                raise ConfigError(
                    f"{name}: rank {spec.rank} is impossible; the layer is {out_f}x{in_f} "
                    f"(after pruning) so the rank must be between 1 and {largest}"
                )
        return self

    def summary(self) -> str:
        """One short line, e.g. ``int8:5 fp16:2 lowrank:3 heads-:1 mlp-:2``."""
        if self.is_identity:
            return "uncompressed"
        counts: dict[str, int] = {}
        for _, spec in self.linear_items:
            if spec.precision != "fp32":
                counts[spec.precision] = counts.get(spec.precision, 0) + 1
            if spec.rank is not None:
                counts["lowrank"] = counts.get("lowrank", 0) + 1
        if self.prune_heads_items:
            counts["heads-"] = len(self.prune_heads_items)
        if self.prune_mlp_items:
            counts["mlp-"] = len(self.prune_mlp_items)
        parts = [f"{k}:{v}" for k, v in counts.items()]
        if self.distill_steps:
            parts.append(f"kd:{self.distill_steps}")
        return " ".join(parts)

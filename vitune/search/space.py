"""The per-layer search space: study menu × model layout → Optuna parameters → config.

Parameter names are ``<unit>:<knob>``: ``blocks.3.mlp.fc1:precision``,
``blocks.3.mlp.fc1:rank_fraction``, ``blocks.3.attn:prune_heads``, ``blocks.3.mlp:prune_mlp``
and ``distill_steps``. A knob whose menu has one value is fixed, not sampled.
"""

from __future__ import annotations

import fnmatch
import random
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from vitune.compression.config import CompressionConfig, LinearConfig
from vitune.compression.methods import CompressionMethods
from vitune.errors import ConfigError
from vitune.models.layers import ModelLayout, kept_count


@dataclass(frozen=True)
class SearchSpace:
    layout: ModelLayout
    choices: tuple[tuple[str, tuple], ...]  # param name → menu, in model order
    methods: CompressionMethods = CompressionMethods()
    ties: tuple[tuple[str, tuple[str, ...]], ...] = ()  # tied parameter → the per-layer names it sets

    @classmethod
    def build(cls, spec, layout: ModelLayout, methods: CompressionMethods | None = None, where: str = "") -> "SearchSpace":
        """``where``: the study file, named in errors. A ``[[space.override]]`` or ``[[space.tie]]``
        whose ``layers`` glob matches no layer of the model is an error (a typo, or a space
        written for another model)."""
        at = f"{where} " if where else ""
        units = [h.name for h in layout.heads] + [m.name for m in layout.mlps] + [u.name for u in layout.linears]
        for i, override in enumerate(getattr(spec, "overrides", ())):
            if not any(fnmatch.fnmatchcase(u, override.layers) for u in units):
                raise ConfigError(f"{at}[[space.override]] #{i + 1} layers = {override.layers!r} matches no layer of the model "
                                  f"(layers look like {layout.linears[0].name}, {layout.heads[0].name if layout.heads else ''})".replace(", )", ")"))
        knobs: list[tuple[str, str, tuple]] = []  # (unit, knob, menu) in model order
        knobs += [(h.name, "prune_heads", spec.menu_for(h.name, "prune_heads")) for h in layout.heads]
        knobs += [(m.name, "prune_mlp", spec.menu_for(m.name, "prune_mlp")) for m in layout.mlps]
        for unit in layout.linears:
            knobs += [(unit.name, "precision", spec.menu_for(unit.name, "precision")),
                      (unit.name, "rank_fraction", spec.menu_for(unit.name, "rank_fraction"))]
        choices: list[tuple[str, tuple]] = []
        groups: dict[str, list[tuple[str, tuple]]] = {}
        for unit, knob, menu in knobs:
            tie = next((t for t in getattr(spec, "ties", ()) if knob in t.knobs and fnmatch.fnmatchcase(unit, t.layers)), None)
            if tie is None:
                choices.append((f"{unit}:{knob}", menu))
                continue
            name = f"{tie.layers}:{knob}"
            if name not in groups:
                groups[name] = []
                choices.append((name, menu))
            groups[name].append((f"{unit}:{knob}", menu))
        for tie in getattr(spec, "ties", ()):
            if not any(n.startswith(f"{tie.layers}:") for n in groups):
                raise ConfigError(f"{at}[[space.tie]] layers = {tie.layers!r} matches no layer of the model (layers look like {layout.linears[0].name})")
        for i, (name, menu) in enumerate(choices):
            if name in groups:
                shared = tuple(v for v in menu if all(v in m for _, m in groups[name]))
                if not shared:
                    raise ConfigError(f"{at}[[space.tie]] {name}: the tied layers' menus have no value in common")
                choices[i] = (name, shared)
        choices.append(("distill_steps", tuple(spec.distill_steps)))
        ties = tuple((name, tuple(n for n, _ in members)) for name, members in groups.items())
        return cls(layout, tuple(choices), methods or CompressionMethods(), ties)

    def expand(self, values: dict) -> dict:
        """Per-layer knob values from parameter values (tied parameters set each of their layers)."""
        out = dict(values)
        for name, members in self.ties:
            if name in out:
                value = out.pop(name)
                out.update({m: value for m in members})
        return out

    @property
    def size(self) -> int:
        n = 1
        for _, menu in self.choices:
            n *= len(menu)
        return n

    def suggest(self, trial) -> CompressionConfig:
        """Sample a configuration with ``trial.suggest_categorical`` for every free knob."""
        values = {}
        for name, menu in self.choices:
            values[name] = trial.suggest_categorical(name, list(menu)) if len(menu) > 1 else menu[0]
        return self.to_config(values)

    def random_configs(self, n: int, seed: int, exclude: Collection[str] = frozenset(), fixed: Mapping | None = None) -> list[CompressionConfig]:
        """``n`` distinct configurations, each knob drawn uniformly from its menu (as Optuna's random
        sampler does), seeded; keys in ``exclude`` are skipped and ``fixed`` values override the
        draws (e.g. ``{"distill_steps": 0}``)."""
        rng = random.Random(seed)
        out: list[CompressionConfig] = []
        seen = set(exclude)
        for _ in range(200 * max(n, 1)):
            if len(out) == n:
                break
            values = {name: rng.choice(menu) for name, menu in self.choices}
            values.update(fixed or {})
            config = self.to_config(values)
            if config.key not in seen:
                seen.add(config.key)
                out.append(config)
        return out

    def covering_configs(self) -> list[CompressionConfig]:
        """Configurations that together build every kernel a configuration of the space can build:
        what ``vitune tune --cover`` tunes, so that a study's candidates find every kernel tuned.

        A layer's kernels depend on its own knobs (precision, rank) and its block's pruning, and
        on its neighbour's inside one attention or MLP unit (GELU fuses with fc1's dequantizing
        epilogue and fc2's quantizing prologue into one kernel), never across units (layer norms
        and the attention kernel start kernels of their own). So each unit (``blocks.3.mlp``: its
        linears' precision and rank and its pruning) must take every combination of its menus
        once, and units of the same role in different blocks have the same shapes, so one
        configuration carries a different combination in each block: about (combinations of a
        unit) / (blocks) configurations, each with no distillation; the uncompressed one left
        out. Tied knobs take each of their values in turn around that."""
        import itertools
        import math
        import re

        def role(name: str) -> str:  # the same knob of any block: blocks.3.mlp.fc1:precision -> blocks.#.mlp.fc1:precision
            return re.sub(r"(?<=\.)\d+(?=[.:]|$)", "#", name)

        tied = {name for name, _ in self.ties}
        # fixed knobs too (menus of one value): a unit whose menu an override narrows has the role
        # of the others and takes the combinations it can of theirs
        free = [(n, m) for n, m in self.choices if n != "distill_steps"]
        units = sorted({h.name for h in self.layout.heads} | {m.name for m in self.layout.mlps}, key=len, reverse=True)
        instances: dict[str, list[tuple[str, tuple]]] = {}
        for name, menu in free:
            if name in tied:
                continue
            unit = name.rsplit(":", 1)[0]
            group = next((u for u in units if unit == u or unit.startswith(u + ".")), unit)
            instances.setdefault(group, []).append((name, menu))
        by_role: dict[tuple[str, ...], list[list[tuple[str, tuple]]]] = {}
        for members in instances.values():
            ordered = sorted(members, key=lambda p: role(p[0]))
            by_role.setdefault(tuple(role(n) for n, _ in ordered), []).append(ordered)
        def fits(combo, inst) -> bool:
            return all(v in m for v, (_, m) in zip(combo, inst))

        needed, takers = {}, {}
        for key, insts in by_role.items():
            combos: list[tuple] = []
            for inst in insts:
                combos += [c for c in itertools.product(*(m for _, m in inst)) if c not in combos]
            needed[key] = combos
            # a combination few units can take (a restricted block's) goes to those first
            takers.update({(key, c): sum(fits(c, inst) for inst in insts) for c in combos})
        identity = self.identity_params()
        seen = {self.to_config({**identity, "distill_steps": 0}).key}
        out: list[CompressionConfig] = []
        tied_free = [(n, m) for n, m in free if n in tied and len(m) > 1]
        for tied_values in itertools.product(*(m for _, m in tied_free)):
            left = {key: list(combos) for key, combos in needed.items()}
            first = True
            while first or any(left.values()):
                first = False
                params = {**identity, "distill_steps": 0, **dict(zip((n for n, _ in tied_free), tied_values))}
                for key, insts in by_role.items():
                    for inst in sorted(insts, key=lambda i: math.prod(len(m) for _, m in i)):  # restricted units first
                        pick = min((c for c in left[key] if fits(c, inst)), key=lambda c: takers[key, c], default=None)
                        if pick is not None:
                            left[key].remove(pick)
                            params.update(zip((n for n, _ in inst), pick))
                config = self.to_config(params)
                if config.key not in seen:
                    seen.add(config.key)
                    out.append(config)
        return out

    def identity_params(self) -> dict:
        """Parameters of the uncompressed model, where the menu allows it (for enqueueing)."""
        ident = {"precision": "fp32", "rank_fraction": 1.0, "prune_heads": 0.0, "prune_mlp": 0.0}
        params = {}
        for name, menu in self.choices:
            if len(menu) < 2:
                continue
            knob = name.rsplit(":", 1)[-1]
            want = 0 if name == "distill_steps" else ident[knob]
            params[name] = want if want in menu else menu[0]
        return params

    def to_config(self, values: dict) -> CompressionConfig:
        """Turn knob values (rank as fraction) into a concrete, validated configuration."""
        values = self.expand(values)
        heads = {h.name: values.get(f"{h.name}:prune_heads", 0.0) for h in self.layout.heads}
        mlps = {m.name: values.get(f"{m.name}:prune_mlp", 0.0) for m in self.layout.mlps}
        linear: dict[str, LinearConfig] = {}
        for unit in self.layout.linears:
            frac = float(values.get(f"{unit.name}:rank_fraction", 1.0))
            rank = None
            if frac < 1.0:
                in_f, out_f = _pruned_shape(self.layout, unit, heads, mlps)
                rank = max(1, int(round(frac * min(in_f, out_f))))
            linear[unit.name] = LinearConfig(values.get(f"{unit.name}:precision", "fp32"), rank)
        config = CompressionConfig.make(linear, heads, mlps, int(values.get("distill_steps", 0)), self.methods)
        return config.validate(self.layout)


def _pruned_shape(layout: ModelLayout, unit, heads: dict, mlps: dict) -> tuple[int, int]:
    in_f, out_f = unit.in_features, unit.out_features
    block = f"blocks.{unit.block}"
    if unit.role.startswith("attn."):
        h = layout.head(f"{block}.attn")
        width = kept_count(h.num_heads, heads.get(f"{block}.attn", 0.0)) * h.head_dim
        return (in_f, 3 * width) if unit.role == "attn.qkv" else (width, out_f)
    m = layout.mlp(f"{block}.mlp")
    width = kept_count(m.hidden, mlps.get(f"{block}.mlp", 0.0))
    return (in_f, width) if unit.role == "mlp.fc1" else (width, out_f)

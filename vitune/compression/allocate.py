"""Rank allocation under a global parameter budget: the seeds' greedy strategy and uniform rank.

``params_budget`` is the share of the original model's parameters the compressed model may
keep (0.4 → at most 40 %, i.e. −60 %). Only low-rank changes parameters here; every other
weight (embeddings, norms, head) counts in full.

``greedy-rank`` (arXiv 2402.06004's greedy mixed-rank allocation): every linear layer starts
dense. Its activation-aware error at rank r is e(r) = ‖X(W − Ŵ_r)ᵀ‖² / ‖X Wᵀ‖², read off the
whitened singular values of the original model's layer (calibration inputs X; see
:class:`~vitune.compression.lowrank.WhitenedSVD`). While the model is over budget, the move —
one layer to a lower rank — with the smallest error increase per parameter saved is taken. A
layer only ever takes ranks below break-even (r·(in + out) < in·out). Ranks move on a grid of
``max(1, min(in, out) // 64)``. The allocation is blind to hardware: it is the reference the
search is compared against.

:func:`menu_rank_walk` is the same greedy restricted to a search space's menu: layers (or tied
groups of layers) step down through given rank fractions only, and every state of the walk is
returned, so one pass gives the allocation at every parameter budget (the search's warm start
takes its points from it).

``uniform-rank``: one rank fraction f for every linear layer (rank = round(f · min(in, out))),
the largest f on a 1/256 grid that meets the budget.
"""

from __future__ import annotations

from torch import nn

from vitune.compression.config import CompressionConfig, LinearConfig
from vitune.compression.methods import CompressionMethods
from vitune.errors import ConfigError

STRATEGIES = ("greedy-rank", "uniform-rank")


def _total_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _check_budget(budget: float) -> None:
    if not 0.0 < budget <= 1.0:
        raise ConfigError(f"params budget {budget!r} must be in (0, 1] (a share of the original parameters)")


def rank_errors(model: nn.Module, units, calib_x, methods: CompressionMethods = CompressionMethods()) -> dict[str, list[float]]:
    """Per linear layer of ``units``: ``err[r]``, the share of its output energy left out at rank
    r (r = 0 … min(in, out)), from the whitened singular values on the calibration inputs."""
    from vitune.compression.calibrate import input_grams
    from vitune.compression.lowrank import WhitenedSVD

    grams = input_grams(model, [u.name for u in units], calib_x)
    out = {}
    for u in units:
        energy = WhitenedSVD(model.get_submodule(u.name).weight, grams[u.name], methods.damping).s.pow(2)
        tail = energy.flip(0).cumsum(0).flip(0) / energy.sum().clamp(min=1e-300)
        out[u.name] = [float(t) for t in tail] + [0.0]  # err[r] = Σ_{i ≥ r} energy / total
    return out


def greedy_ranks(model: nn.Module, layout, calib_x, params_budget: float, methods: CompressionMethods = CompressionMethods()) -> CompressionConfig:
    """The greedy allocation (see the module doc) as a configuration."""
    _check_budget(params_budget)
    units = list(layout.linears)
    errors = rank_errors(model, units, calib_x, methods)
    total = _total_params(model)
    budget = params_budget * total
    # energy left out at each rank, per layer: err[l][r] for r = 0..min(in, out)
    state = {}
    for u in units:
        err = errors[u.name]
        full = u.in_features * u.out_features
        step = max(1, min(u.in_features, u.out_features) // 64)
        ranks = [r for r in range(step, min(u.in_features, u.out_features) + 1, step) if r * (u.in_features + u.out_features) < full]
        state[u.name] = {"err": err, "ranks": ranks, "cost": u.in_features + u.out_features, "full": full, "rank": None}

    def params_of(s, rank):
        return s["full"] if rank is None else rank * s["cost"]

    current = total
    while current > budget:
        best = None
        for name, s in state.items():
            here_p = params_of(s, s["rank"])
            here_e = 0.0 if s["rank"] is None else s["err"][s["rank"]]
            for r in s["ranks"]:
                if s["rank"] is not None and r >= s["rank"]:
                    break
                saved = here_p - params_of(s, r)
                if saved <= 0:
                    continue
                ratio = (s["err"][r] - here_e) / saved
                if best is None or ratio < best[0]:
                    best = (ratio, name, r, saved)
        if best is None:
            floor = total - sum(s["full"] - params_of(s, s["ranks"][0] if s["ranks"] else None) for s in state.values())
            raise ConfigError(
                f"params budget {params_budget} is unreachable by low-rank alone: the smallest ranks keep "
                f"{floor / total:.3f} of the parameters"
            )
        _, name, r, saved = best
        state[name]["rank"] = r
        current -= saved
    linear = {name: LinearConfig("fp32", s["rank"]) for name, s in state.items() if s["rank"] is not None}
    return CompressionConfig.make(linear, methods=methods).validate(layout)


def uniform_ranks(model: nn.Module, layout, params_budget: float, methods: CompressionMethods = CompressionMethods()) -> CompressionConfig:
    """One rank fraction for every linear layer, the largest that meets the budget."""
    _check_budget(params_budget)
    total = _total_params(model)
    dense = sum(u.in_features * u.out_features for u in layout.linears)

    def config_at(f):
        return {u.name: max(1, round(f * min(u.in_features, u.out_features))) for u in layout.linears}

    def params_at(f):
        ranks = config_at(f)
        return total - dense + sum(ranks[u.name] * (u.in_features + u.out_features) for u in layout.linears)

    for k in range(256, 0, -1):
        if params_at(k / 256) <= params_budget * total:
            ranks = config_at(k / 256)
            return CompressionConfig.make({n: LinearConfig("fp32", r) for n, r in ranks.items()}, methods=methods).validate(layout)
    raise ConfigError(f"params budget {params_budget} is unreachable: rank 1 everywhere keeps {params_at(0) / total:.3f} of the parameters")


def menu_rank_walk(model: nn.Module, layout, calib_x, groups: dict[str, tuple[tuple[str, ...], tuple[float, ...]]],
                   methods: CompressionMethods = CompressionMethods()) -> list[tuple[float, dict[str, float]]]:
    """The greedy allocation on a menu: ``(share of the model's parameters kept, {group: rank
    fraction})`` at every step, from the first move to the last (dense groups left out).

    ``groups``: name → (its linear layers, its menu of rank fractions). A group moves as one: all
    its layers take the same fraction (rank = round(f · min(in, out)), at least 1), as a tied
    knob of the search space does. Each step takes the move — one group to a lower fraction of
    its menu — with the smallest increase of its layers' summed activation-aware error per
    parameter saved; a fraction whose rank is not below a layer's break-even is counted as that
    layer dense (no saving, no error). The walk ends where no move saves parameters."""
    by_name = {u.name: u for u in layout.linears}
    units = [by_name[n] for layers, _ in groups.values() for n in layers]
    errors = rank_errors(model, units, calib_x, methods)
    total = _total_params(model)

    def rank_of(name: str, frac: float) -> int | None:
        u = by_name[name]
        rank = max(1, round(frac * min(u.in_features, u.out_features)))
        return rank if frac < 1.0 and rank * (u.in_features + u.out_features) < u.in_features * u.out_features else None

    def cost(group: str, frac: float) -> tuple[float, int]:
        """(summed error, parameters) of the group's layers at ``frac``."""
        err, params = 0.0, 0
        for n in groups[group][0]:
            r, u = rank_of(n, frac), by_name[n]
            err += 0.0 if r is None else errors[n][r]
            params += u.in_features * u.out_features if r is None else r * (u.in_features + u.out_features)
        return err, params

    current = {g: 1.0 for g in groups}
    kept = total
    walk: list[tuple[float, dict[str, float]]] = []
    while True:
        best = None
        for g, (_, menu) in groups.items():
            here_e, here_p = cost(g, current[g])
            for f in sorted((f for f in menu if f < current[g]), reverse=True):
                e, p = cost(g, f)
                if p < here_p:
                    ratio = (e - here_e) / (here_p - p)
                    if best is None or ratio < best[0]:
                        best = (ratio, g, f, here_p - p)
        if best is None:
            return walk
        _, g, f, saved = best
        current[g] = f
        kept -= saved
        walk.append((kept / total, {k: v for k, v in current.items() if v < 1.0}))


def allocate(strategy: str, model: nn.Module, layout, calib_x, params_budget: float, methods: CompressionMethods = CompressionMethods()) -> CompressionConfig:
    if strategy == "greedy-rank":
        return greedy_ranks(model, layout, calib_x, params_budget, methods)
    if strategy == "uniform-rank":
        return uniform_ranks(model, layout, params_budget, methods)
    raise ConfigError(f"unknown strategy {strategy!r} (expected {', '.join(STRATEGIES)})")

"""Calibration data and activation capture for the data-aware transforms.

``Calibration`` holds a fixed batch of images (and labels) from the ``calib`` split — never
train, val or test images — and caches statistics of the *original* model that every trial
reuses (unit importances for pruning). ``capture_inputs`` records what a set of modules receive
when a model runs on that batch, and stops the forward pass as soon as it has them all.
"""

from __future__ import annotations

import torch
from torch import nn


class _Stop(Exception):
    pass


class Calibration:
    """The calibration batch and per-original-model caches.

    ``x``: images (N, C, H, W); ``y``: labels (N,). Build with :meth:`from_dataset`.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x = x
        self.y = y
        self._cache: dict = {}

    @classmethod
    def from_dataset(cls, dataset, images: int) -> "Calibration":
        from vitune.data.splits import sample_batch

        n = min(int(images), len(dataset))
        x, y = sample_batch(dataset, torch.arange(n))
        return cls(x, y)

    def cached(self, key, make):
        """Memoise ``make()`` under ``key`` (keys name the model and what was computed)."""
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]


@torch.no_grad()
def capture_inputs(model: nn.Module, names: list[str], x: torch.Tensor, batch_size: int = 64, flat: bool = True) -> dict[str, torch.Tensor]:
    """Inputs each named module receives on ``x`` (its first argument), flattened to (rows,
    in_features), float32; with ``flat=False`` as they are.

    The forward pass of each chunk stops once every named module has been seen.
    """
    want = list(dict.fromkeys(names))
    got: dict[str, list[torch.Tensor]] = {n: [] for n in want}
    seen: set[str] = set()
    handles = []

    def hook_for(name):
        def hook(_module, args):
            a = args[0].detach()
            got[name].append(a.reshape(-1, a.shape[-1]).to(torch.float32) if flat else a)
            seen.add(name)
            if len(seen) == len(want):
                raise _Stop

        return hook

    for name in want:
        handles.append(model.get_submodule(name).register_forward_pre_hook(hook_for(name)))
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(x), batch_size):
            seen.clear()
            try:
                model(x[start : start + batch_size])
            except _Stop:
                pass
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    missing = [n for n in want if not got[n]]
    if missing:
        raise RuntimeError(f"module {missing[0]!r} was never called on the calibration batch")
    return {n: torch.cat(v) for n, v in got.items()}


@torch.no_grad()
def input_grams(model: nn.Module, names: list[str], x: torch.Tensor, batch_size: int = 64) -> dict[str, torch.Tensor]:
    """XᵀX (float64) of the inputs each named module receives on ``x``, in one pass.

    Memory is one (in × in) matrix per module, whatever the number of calibration tokens.
    """
    grams: dict[str, torch.Tensor] = {}
    handles = []

    def hook_for(name):
        def hook(_module, args):
            a = args[0].detach().reshape(-1, args[0].shape[-1]).to(torch.float64)
            grams[name] = grams.get(name, 0) + a.T @ a

        return hook

    for name in dict.fromkeys(names):
        handles.append(model.get_submodule(name).register_forward_pre_hook(hook_for(name)))
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(x), batch_size):
            model(x[start : start + batch_size])
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return grams


@torch.no_grad()
def run_capturing(module: nn.Module, names: list[str], h: torch.Tensor, batch_size: int = 64) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``module`` applied to ``h`` in chunks (as :func:`run_chunked`) and, from the same pass, the
    inputs each named submodule receives (as :func:`capture_inputs`: flattened, float32)."""
    got: dict[str, list[torch.Tensor]] = {n: [] for n in dict.fromkeys(names)}

    def hook_for(name):
        def hook(_module, args):
            a = args[0].detach()
            got[name].append(a.reshape(-1, a.shape[-1]).to(torch.float32))

        return hook

    handles = [module.get_submodule(name).register_forward_pre_hook(hook_for(name)) for name in got]
    try:
        out = run_chunked(module, h, batch_size)
    finally:
        for handle in handles:
            handle.remove()
    missing = [n for n, v in got.items() if not v]
    if missing:
        raise RuntimeError(f"module {missing[0]!r} was never called on the calibration batch")
    return {n: torch.cat(v) for n, v in got.items()}, out


@torch.no_grad()
def run_chunked(module: nn.Module, h: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """``module`` applied to ``h`` in chunks of ``batch_size`` along the first dimension."""
    return torch.cat([module(h[start : start + batch_size]) for start in range(0, len(h), batch_size)])


def blocks_chain(model: nn.Module, x: torch.Tensor, batch_size: int = 64) -> bool:
    """Whether ``model`` runs its ``blocks`` one after the other, each on the previous one's
    output (as timm's ViTs do): block ``i``'s input is block ``i - 1``'s output on ``x``, checked
    for the first and the last pair of blocks."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Sequential) or len(blocks) < 2:
        return False
    n = len(blocks)
    for i in sorted({1, n - 1}):
        pair = [f"blocks.{i - 1}", f"blocks.{i}"]
        try:
            before, after = capture_inputs(model, pair, x, batch_size, flat=False).values()
        except RuntimeError:
            return False
        if before.shape[0] != after.shape[0] or not torch.equal(run_chunked(blocks[i - 1], before, batch_size), after):
            return False
    return True

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
def capture_inputs(model: nn.Module, names: list[str], x: torch.Tensor, batch_size: int = 64) -> dict[str, torch.Tensor]:
    """Inputs each named module receives on ``x``, flattened to (rows, in_features), float32.

    The forward pass of each chunk stops once every named module has been seen.
    """
    want = list(dict.fromkeys(names))
    got: dict[str, list[torch.Tensor]] = {n: [] for n in want}
    seen: set[str] = set()
    handles = []

    def hook_for(name):
        def hook(_module, args):
            got[name].append(args[0].detach().reshape(-1, args[0].shape[-1]).to(torch.float32))
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

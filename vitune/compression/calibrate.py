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


class _Recorder:
    """Forward pre-hooks on the named submodules of ``model`` (while in a ``with``) that record
    the inputs each receives (first argument), flattened to (rows, in_features) float32, or with
    ``flat=False`` as they are; ``stop``: end the pass (``_Stop``) once each was seen in it
    (:meth:`new_pass` starts the next)."""

    def __init__(self, model: nn.Module, names: list[str], flat: bool = True, stop: bool = False):
        self.model, self.flat, self.stop = model, flat, stop
        self.got: dict[str, list[torch.Tensor]] = {n: [] for n in dict.fromkeys(names)}
        self.seen: set[str] = set()
        self.handles: list = []

    def _hook(self, name):
        def hook(_module, args):
            a = args[0].detach()
            self.got[name].append(a.reshape(-1, a.shape[-1]).to(torch.float32) if self.flat else a)
            self.seen.add(name)
            if self.stop and len(self.seen) == len(self.got):
                raise _Stop

        return hook

    def __enter__(self) -> "_Recorder":
        self.handles = [self.model.get_submodule(n).register_forward_pre_hook(self._hook(n)) for n in self.got]
        return self

    def __exit__(self, *_) -> None:
        for h in self.handles:
            h.remove()

    def new_pass(self) -> None:
        self.seen.clear()

    def inputs(self) -> dict[str, torch.Tensor]:
        missing = [n for n, v in self.got.items() if not v]
        if missing:
            raise RuntimeError(f"module {missing[0]!r} was never called on the calibration batch")
        return {n: torch.cat(v) for n, v in self.got.items()}


@torch.no_grad()
def capture_inputs(model: nn.Module, names: list[str], x: torch.Tensor, batch_size: int = 64, flat: bool = True) -> dict[str, torch.Tensor]:
    """Inputs each named module receives on ``x`` (its first argument), flattened to (rows,
    in_features), float32; with ``flat=False`` as they are.

    The forward pass of each chunk stops once every named module has been seen.
    """
    was_training = model.training
    model.eval()
    try:
        with _Recorder(model, names, flat, stop=True) as recorder:
            for start in range(0, len(x), batch_size):
                recorder.new_pass()
                try:
                    model(x[start : start + batch_size])
                except _Stop:
                    pass
    finally:
        model.train(was_training)
    return recorder.inputs()


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
    with _Recorder(module, names) as recorder:
        out = run_chunked(module, h, batch_size)
    return recorder.inputs(), out


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

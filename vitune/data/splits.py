"""Disjoint, deterministic splits and the helpers that read them.

Every data source yields four disjoint splits of one labelled set:

* ``train`` — training the default model and knowledge-distillation recovery;
* ``calib`` — calibration activations for the compression transforms;
* ``val`` — the accuracy the search optimises;
* ``test`` — held out: only ``vitune apply`` reports it; the search never reads it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

SPLIT_NAMES = ("train", "calib", "val", "test")


@dataclass(frozen=True)
class DataSplits:
    train: Dataset
    calib: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, ...]  # one example, without the batch dimension, e.g. (1, 8, 8)
    name: str  # e.g. "digits"

    def get(self, split: str) -> Dataset:
        if split not in SPLIT_NAMES:
            raise ValueError(f"unknown split {split!r}")
        return getattr(self, split)


def split_indices(labels: np.ndarray, fractions: dict[str, float], seed: int) -> dict[str, np.ndarray]:
    """Stratified, deterministic partition of ``range(len(labels))`` by ``fractions`` (sum ≤ 1).

    Each class is shuffled with ``seed`` and cut in the order of ``SPLIT_NAMES``; the parts
    are disjoint by construction.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, list[int]] = {name: [] for name in fractions}
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        idx = idx[rng.permutation(len(idx))]
        start = 0
        names = [n for n in SPLIT_NAMES if n in fractions]
        for j, name in enumerate(names):
            stop = len(idx) if (j == len(names) - 1 and sum(fractions.values()) >= 0.999) else start + int(round(fractions[name] * len(idx)))
            out[name].extend(idx[start:stop].tolist())
            start = stop
    return {k: np.array(sorted(v), dtype=np.int64) for k, v in out.items()}


# Pixel offsets (rows, columns) of the deterministic validation copies, the original first.
SHIFTS = ((0, 0), (1, 0), (0, 1), (-1, 0), (0, -1), (1, 1), (-1, -1), (1, -1), (-1, 1))


def shifted(images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``images`` (…, H, W) moved ``dy`` rows down and ``dx`` columns right, edges replicated."""
    if dy == dx == 0:
        return images
    h, w = images.shape[-2:]
    pad = (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0))  # left, right, top, bottom
    flat = images.reshape(-1, 1, h, w)
    out = torch.nn.functional.pad(flat, pad, mode="replicate")[..., max(-dy, 0): max(-dy, 0) + h, max(-dx, 0): max(-dx, 0) + w]
    return out.reshape(images.shape).contiguous()


class ShiftedCopies(Dataset):
    """``copies`` versions of every example of ``base``: the original, then the image moved by
    one pixel per :data:`SHIFTS` (edges replicated), labels unchanged. Example ``i`` is copy
    ``i // len(base)`` of ``base[i % len(base)]``, so the first ``len(base)`` are ``base`` itself.

    A larger validation split from a small labelled set, with no image taken from another split
    (the copies are of validation images only): one image weighs less, so candidates that differ
    by a few images rank the same way under a re-draw. The copies are not independent images;
    they make the accuracy a smoother function of the model, not a sample of more digits.
    """

    def __init__(self, base: Dataset, copies: int):
        if not 1 <= copies <= len(SHIFTS):
            raise ValueError(f"copies must be 1..{len(SHIFTS)}, got {copies}")
        self.base, self.copies = base, copies
        tensors = getattr(base, "tensors", None)
        if tensors is not None:  # tensor data: materialise, so batches keep their fast path
            x, y = tensors
            self.tensors = (torch.cat([shifted(x, *SHIFTS[k]) for k in range(copies)]), y.repeat(copies))

    def __len__(self) -> int:
        return len(self.base) * self.copies

    def __getitem__(self, i: int):
        if hasattr(self, "tensors"):
            return self.tensors[0][i], self.tensors[1][i]
        n = len(self.base)
        x, y = self.base[i % n]
        return shifted(x, *SHIFTS[i // n]), y


def sample_batch(dataset: Dataset, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather ``dataset[i] for i in idx`` into one batch (fast path for tensor data sets)."""
    tensors = getattr(dataset, "tensors", None)
    if tensors is not None:
        return tensors[0][idx], tensors[1][idx]
    return default_collate([dataset[int(i)] for i in idx])


def iterate(dataset: Dataset, batch_size: int = 256, limit: int | None = None):
    """Yield ``(images, labels)`` batches in order; ``limit`` caps the number of examples."""
    n = len(dataset) if limit is None else min(limit, len(dataset))
    for start in range(0, n, batch_size):
        yield sample_batch(dataset, torch.arange(start, min(start + batch_size, n)))


# Images per forward pass when reading accuracy. On deit_tiny at 224 px (2-core Zen 4), 256
# images of the fp32 model took 8.5-8.9 s in batches of 256 and 6.1-6.2 s in batches of 32; with
# every block's linears W8A8, 11.0-13.2 s against 7.7-7.9 s (attention's 197 x 197 scores of a
# large batch outgrow the cache). Tiny inputs (digits) do not notice.
EVAL_BATCH = 32


@torch.inference_mode()
def accuracy(model: torch.nn.Module, dataset: Dataset, batch_size: int = EVAL_BATCH) -> float:
    """Top-1 accuracy of ``model`` on ``dataset``, in [0, 1]."""
    model.eval()
    correct = total = 0
    for x, y in iterate(dataset, batch_size):
        correct += int((model(x).argmax(dim=-1) == y).sum())
        total += int(y.numel())
    return correct / max(total, 1)


@torch.inference_mode()
def accuracy_in_shards(model: torch.nn.Module, dataset: Dataset, shards: int, hopeless=None, batch_size: int = EVAL_BATCH,
                       before_batch=None):
    """Top-1 accuracy read in ``shards`` equal parts; after each part but the last,
    ``hopeless(best_possible)`` is asked whether the candidate can still matter, where
    ``best_possible`` is the accuracy if every unseen example were right (a true upper bound).
    ``before_batch()``, if given, is called before each batch (it may wait, or raise to stop).

    Returns ``(accuracy, seen, best_possible)``: ``seen == len(dataset)`` when it ran to the end
    (then all three agree); otherwise it stopped early and ``accuracy`` covers the seen part.
    """
    model.eval()
    n = len(dataset)
    shards = max(1, min(int(shards), n))
    bounds = [round(i * n / shards) for i in range(shards + 1)]
    correct = 0
    for i in range(shards):
        for start in range(bounds[i], bounds[i + 1], batch_size):
            if before_batch is not None:
                before_batch()
            x, y = sample_batch(dataset, torch.arange(start, min(start + batch_size, bounds[i + 1])))
            correct += int((model(x).argmax(dim=-1) == y).sum())
        seen = bounds[i + 1]
        best_possible = (correct + n - seen) / max(n, 1)
        if seen < n and hopeless is not None and hopeless(best_possible):
            return correct / max(seen, 1), seen, best_possible
    return correct / max(n, 1), n, correct / max(n, 1)


@torch.inference_mode()
def predictions(model: torch.nn.Module, dataset: Dataset, limit: int | None = None, batch_size: int = EVAL_BATCH) -> torch.Tensor:
    """Top-1 predictions of ``model`` on the first ``limit`` examples of ``dataset``."""
    model.eval()
    return torch.cat([model(x).argmax(dim=-1) for x, _ in iterate(dataset, batch_size, limit)])

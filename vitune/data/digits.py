"""scikit-learn's digits: 1,797 8×8 grey images of 10 digits, shipped inside scikit-learn.

Pixels (0..16) are scaled to [0, 1] then standardised with the training split's mean/std.
Splits (stratified by class, seed 0): train 60 %, calib 10 %, val 15 %, test 15 %.
``image_size`` above 8 upscales every image bilinearly (after standardising): the embedded
``digits_vit_base`` reads digits at 32×32, so that it has 64 patches of 4×4 as DeiT has 196 of 16×16.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import TensorDataset

from vitune.data.splits import DataSplits, split_indices

FRACTIONS = {"train": 0.60, "calib": 0.10, "val": 0.15, "test": 0.15}


def load_digits_splits(seed: int = 0, image_size: int = 8) -> DataSplits:
    from sklearn.datasets import load_digits

    if image_size < 8:
        raise ValueError(f"digits are 8x8: image_size must be 8 or more, got {image_size}")

    bunch = load_digits()
    images = bunch.images.astype(np.float32) / 16.0
    labels = bunch.target.astype(np.int64)
    parts = split_indices(labels, FRACTIONS, seed)
    mean, std = images[parts["train"]].mean(), images[parts["train"]].std()
    images = (images - mean) / std
    x = torch.from_numpy(images).unsqueeze(1).contiguous()
    if image_size != 8:
        x = torch.nn.functional.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False).contiguous()
    y = torch.from_numpy(labels)
    sets = {name: TensorDataset(x[idx], y[idx]) for name, idx in parts.items()}
    return DataSplits(**sets, num_classes=10, input_shape=(1, image_size, image_size),
                      name="digits" if image_size == 8 else f"digits{image_size}")

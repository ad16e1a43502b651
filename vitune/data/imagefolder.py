"""An ImageFolder tree (``root/<class>/<image>``) with timm's eval transforms for a model.

The folder is split disjointly and deterministically (stratified by class) into
train/calib/val/test by the study's fractions, e.g. an ImageNet validation folder for a
pretrained timm model: ``train`` feeds distillation, ``calib`` the transforms, ``val`` the
search and ``test`` the final report.
"""

from __future__ import annotations

import numpy as np
from torch.utils.data import Subset

from vitune.data.splits import DataSplits, split_indices
from vitune.errors import ConfigError


def load_imagefolder_splits(root: str, model, fractions: dict[str, float], seed: int = 0) -> DataSplits:
    from timm.data import create_transform, resolve_data_config
    from torchvision.datasets import ImageFolder

    config = resolve_data_config({}, model=model)
    img_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if img_size:  # the model may be built at another resolution than its pretrained config says
        config["input_size"] = (config["input_size"][0], *tuple(img_size))
    transform = create_transform(**config, is_training=False)
    try:
        folder = ImageFolder(root, transform=transform)
    except (FileNotFoundError, OSError) as err:
        raise ConfigError(f"data root {root!r}: {err}") from None
    labels = np.asarray(folder.targets)
    parts = split_indices(labels, fractions, seed)
    for name in ("val", "test"):
        if len(parts[name]) == 0:
            raise ConfigError(f"data root {root!r}: too few images for a non-empty {name} split ({len(labels)} images)")
    sets = {name: Subset(folder, idx.tolist()) for name, idx in parts.items()}
    return DataSplits(**sets, num_classes=len(folder.classes), input_shape=tuple(config["input_size"]), name=f"imagefolder:{root}")

"""An ImageFolder tree (``root/<class>/<image>``) with timm's eval transforms for a model.

The folder is split disjointly and deterministically (stratified by class) into
train/calib/val/test by the study's fractions, e.g. an ImageNet validation folder for a
pretrained timm model: ``train`` feeds distillation, ``calib`` the transforms, ``val`` the
search and ``test`` the final report.

Every image is checked once, up front (:func:`check_images`): a file that cannot be decoded is
an error naming it before any trial runs, never a trial failure or a traceback in ``apply``. A
folder that passed is remembered by its files' names, sizes and times.
"""

from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset, Subset

from vitune.data.splits import DataSplits, split_indices
from vitune.errors import ConfigError, message_line


def eval_transform(model) -> tuple:
    """``(transform, input_size)``: timm's eval transforms for ``model``, at the resolution it was
    built for."""
    from timm.data import create_transform, resolve_data_config

    config = resolve_data_config({}, model=model)
    img_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if img_size:  # the model may be built at another resolution than its pretrained config says
        config["input_size"] = (config["input_size"][0], *tuple(img_size))
    return create_transform(**config, is_training=False), tuple(config["input_size"])


def load_imagefolder_splits(root: str, model, fractions: dict[str, float], seed: int = 0) -> DataSplits:
    from torchvision.datasets import ImageFolder

    transform, input_size = eval_transform(model)
    try:
        folder = ImageFolder(root, transform=transform)
    except (FileNotFoundError, OSError) as err:
        raise ConfigError(f"data root {root!r}: {err}") from None
    check_images(root, [path for path, _ in folder.samples])
    labels = np.asarray(folder.targets)
    parts = split_indices(labels, fractions, seed)
    for name in ("val", "test"):
        if len(parts[name]) == 0:
            raise ConfigError(f"data root {root!r}: too few images for a non-empty {name} split ({len(labels)} images)")
    budget = _Budget(decoded_budget_mb())
    sets = {name: DecodedOnce(Subset(folder, idx.tolist()), budget) for name, idx in parts.items()}
    return DataSplits(**sets, num_classes=len(folder.classes), input_shape=input_size, name=f"imagefolder:{root}")


DECODED_ENV = "VITUNE_DECODED_MB"  # how much decoded image data a process keeps (MiB)
DEFAULT_DECODED_MB = 2048


def decoded_budget_mb() -> float:
    import os

    raw = os.environ.get(DECODED_ENV, "")
    try:
        return max(0.0, float(raw)) if raw.strip() else DEFAULT_DECODED_MB
    except ValueError:
        raise ConfigError(f"{DECODED_ENV}={raw!r}: expected a number of MiB") from None


class _Budget:
    """Bytes of decoded images the splits of one folder may still keep, shared by them."""

    def __init__(self, mb: float):
        self.left = int(mb * 2**20)


class DecodedOnce(Dataset):
    """A split whose images are decoded and transformed on first read, then kept.

    The eval transforms are deterministic, so a kept image is the image read again. A study reads
    its validation split in every trial and distillation its training split at every step: each
    image is decoded and resized once per process, not once per read.
    Images are kept while the folder's budget lasts (``VITUNE_DECODED_MB``, default 2048 MiB,
    about 3,500 images at 224 px in float32); past it, they are decoded on every read."""

    def __init__(self, subset, budget: _Budget):
        self.subset, self.budget = subset, budget
        self.kept: dict[int, tuple] = {}

    def __len__(self) -> int:
        return len(self.subset)

    def __getitem__(self, i: int):
        hit = self.kept.get(i)
        if hit is not None:
            return hit
        item = self.subset[i]
        size = sum(t.element_size() * t.nelement() for t in item if hasattr(t, "nelement"))
        if size <= self.budget.left:
            self.budget.left -= size
            self.kept[i] = item
        return item


def check_images(root: str, paths: list[str]) -> None:
    """Raise a one-line :class:`ConfigError` listing the images PIL cannot read (at most 5 named)."""
    import hashlib
    import os

    from PIL import Image

    from vitune.paths import cache_dir

    digest = hashlib.sha256()
    for path in paths:
        st = os.stat(path)
        digest.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    marker = cache_dir() / "imagechecks" / digest.hexdigest()[:24]
    if marker.exists():
        return
    bad: list[tuple[str, str]] = []
    for path in paths:
        try:
            with Image.open(path) as im:
                im.verify()  # the header and structure, without decoding every pixel
            with Image.open(path) as im:
                im.load()
        except Exception as err:  # PIL raises many types for a bad file
            bad.append((path, f"{type(err).__name__}: {message_line(err, last=False) if str(err).strip() else ''}".rstrip(": ")))
    if bad:
        named = "; ".join(f"{p} ({why})" for p, why in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise ConfigError(f"data root {root!r}: {len(bad)} of {len(paths)} images cannot be read: {named}{more}")
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"{len(paths)} images under {root} read\n")

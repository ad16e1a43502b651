"""Load the model a study names, with the data it is scored on.

``load_workspace(model_spec, data_spec)`` returns a :class:`Workspace`: the original model
(eval mode), its reference (name, checkpoint hash) and the four data splits.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass

import torch

from vitune.data.splits import DataSplits
from vitune.errors import ConfigError, message_line


@dataclass(frozen=True)
class ModelRef:
    """What identifies the original model: enough to rebuild it and to check it is the same.

    The fields of the study file's ``ModelSpec`` plus the hash of the weights.
    """

    source: str
    name: str
    checkpoint_sha256: str
    pretrained: bool = False
    checkpoint: str = ""
    num_classes: int = 0
    img_size: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Workspace:
    model: torch.nn.Module
    ref: ModelRef
    data: DataSplits
    info: dict

    def example_input(self, batch: int = 1) -> torch.Tensor:
        gen = torch.Generator().manual_seed(0)
        return torch.randn((batch, *self.data.input_shape), generator=gen)


def state_dict_sha256(model: torch.nn.Module) -> str:
    """Hash of the weights (names, dtypes, shapes, bytes), independent of the file format."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


RANDOM_INIT_SEED = 0  # a timm model without pretrained weights or a checkpoint is initialised from this seed


def _timm_model(spec):
    import timm

    try:
        kwargs = {"pretrained": spec.pretrained}
        if spec.num_classes:
            kwargs["num_classes"] = spec.num_classes
        if spec.img_size:
            kwargs["img_size"] = spec.img_size
        if spec.checkpoint:
            kwargs["checkpoint_path"] = spec.checkpoint
        if spec.pretrained or spec.checkpoint:
            model = timm.create_model(spec.name, **kwargs)
        else:  # random init: the same weights in every process, so a study resumes and its exports apply
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_INIT_SEED)
                model = timm.create_model(spec.name, **kwargs)
    except (RuntimeError, TypeError) as err:
        if "Unknown model" in str(err):
            raise ConfigError(f"unknown timm model {spec.name!r} (see timm.list_models('*vit*'))") from None
        raise ConfigError(f"timm model {spec.name!r}: {message_line(err, last=False)}") from None
    except OSError as err:
        raise ConfigError(f"timm model {spec.name!r}: cannot load weights ({message_line(err, last=False)})") from None
    return model.eval()


def load_workspace(model_spec, data_spec, progress: bool = True) -> Workspace:
    fractions = dict(data_spec.fractions)
    if model_spec.source == "default":
        from vitune.data.digits import load_digits_splits
        from vitune.models.default import RECIPES, load_or_train_default

        recipe = RECIPES[model_spec.name]  # the study file's reader checked the name
        data = load_digits_splits(data_spec.seed, recipe.image_size)
        model, info = load_or_train_default(data, recipe, progress=progress)
    elif model_spec.source == "timm":
        model = _timm_model(model_spec)
        info = {}
        if data_spec.source == "imagefolder":
            from vitune.data.imagefolder import load_imagefolder_splits

            data = load_imagefolder_splits(data_spec.root, model, fractions, data_spec.seed)
        else:
            raise ConfigError(f"a timm model needs [data] source = \"imagefolder\", not {data_spec.source!r}")
        classes = getattr(model, "num_classes", data.num_classes)
        if classes != data.num_classes:
            raise ConfigError(
                f"model {model_spec.name!r} predicts {classes} classes but {data_spec.root!r} has {data.num_classes}; "
                f"set [model].num_classes = {data.num_classes} or use a matching folder"
            )
    else:  # the study file parser rejects other sources
        raise ConfigError(f"unknown model source {model_spec.source!r}")
    if data_spec.val_copies > 1:
        from vitune.data.splits import ShiftedCopies

        data = dataclasses.replace(data, val=ShiftedCopies(data.val, data_spec.val_copies))
    ref = ModelRef(checkpoint_sha256=state_dict_sha256(model), **dataclasses.asdict(model_spec))
    return Workspace(model=model, ref=ref, data=data, info=info)

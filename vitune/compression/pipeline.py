"""Apply a :class:`CompressionConfig` to a model: prune → low-rank → distill → quantize.

Contract: ``compress(model, config)`` validates ``config`` against the model's layout, never
modifies ``model``, and returns a new model in eval mode whose compressible units are
replaced as the config says. Unnamed units are left exactly as they were. Distillation
(``config.distill_steps > 0``) needs ``train_data``, the training split (a Dataset);
the original model is the teacher.
"""

from __future__ import annotations

import copy

from torch import nn

from vitune.compression.config import CompressionConfig
from vitune.compression.distill import DistillSettings, distill
from vitune.compression.lowrank import factorize
from vitune.compression.prune import prune_heads, prune_mlp
from vitune.compression.quantize import quantize_linear
from vitune.errors import ConfigError
from vitune.models.layers import discover


def _get(model: nn.Module, path: str) -> nn.Module:
    return model.get_submodule(path)


def _set(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def compress(
    model: nn.Module,
    config: CompressionConfig,
    train_data=None,
    distill_settings: DistillSettings = DistillSettings(),
    seed: int = 0,
) -> nn.Module:
    layout = discover(model)
    config.validate(layout)
    student = copy.deepcopy(model).eval()
    if config.is_identity:
        return student
    for name, ratio in config.prune_heads_items:
        prune_heads(_get(student, name), ratio, where=name)
    for name, ratio in config.prune_mlp_items:
        prune_mlp(_get(student, name), ratio, where=name)
    for name, spec in config.linear_items:
        if spec.rank is not None:
            _set(student, name, factorize(_get(student, name), spec.rank, where=name))
    if config.distill_steps:
        if train_data is None:
            raise ConfigError("distill_steps > 0 needs the training split, which was not given")
        distill(student, model, train_data, config.distill_steps, distill_settings, seed)
    for name, spec in config.linear_items:
        if spec.precision != "fp32":
            _set(student, name, quantize_linear(_get(student, name), spec.precision, where=name))
    for p in student.parameters():
        p.requires_grad_(False)
    return student.eval()

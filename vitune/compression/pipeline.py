"""Apply a :class:`CompressionConfig` to a model: prune → low-rank → distill → quantize.

Contract: ``compress(model, config, train_data, calibration)`` validates ``config`` against the
model's layout, never modifies ``model``, and returns a new model in eval mode whose
compressible units are replaced as the config says; unnamed units are left exactly as they
were. Data each step reads (``config.methods`` chooses the method):

* pruning — the original model's unit scores on the calibration batch (``activation``,
  ``taylor``; cached in the :class:`Calibration` across calls);
* low-rank — in model order, each layer's inputs in the model compressed so far (``aa``,
  ``aa-residual``) and in the pruned model before low-rank (``aa-residual``'s reference);
* distillation — the training split (``train_data``); the original model is the teacher;
* quantization — ``w8a8`` activation scales from the calibration batch, on the model as it is
  after the steps above.

Calibration images come from the ``calib`` split only; nothing here reads val or test.
"""

from __future__ import annotations

import copy

from torch import nn

from vitune.compression.calibrate import Calibration, capture_inputs
from vitune.compression.config import CompressionConfig
from vitune.compression.distill import DistillSettings, distill
from vitune.compression.lowrank import factorize, factorize_aa, factorize_aa_residual
from vitune.compression.prune import prune_heads, prune_mlp, unit_scores
from vitune.compression.quantize import quantize_model
from vitune.errors import ConfigError
from vitune.models.layers import discover


def _set(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def needs_calibration(config: CompressionConfig) -> bool:
    m = config.methods
    prunes = bool(config.prune_heads_items or config.prune_mlp_items)
    ranks = any(spec.rank is not None for _, spec in config.linear_items)
    w8a8 = any(spec.precision == "w8a8" for _, spec in config.linear_items)
    return (prunes and m.prune_criterion != "magnitude") or (ranks and m.lowrank != "svd") or w8a8


def compress(
    model: nn.Module,
    config: CompressionConfig,
    train_data=None,
    calibration: Calibration | None = None,
    seed: int = 0,
    report: dict | None = None,
) -> nn.Module:
    """The compressed copy of ``model``; ``report`` (if given) receives per-layer details."""
    layout = discover(model)
    config.validate(layout)
    student = copy.deepcopy(model).eval()
    if config.is_identity:
        return student
    methods = config.methods
    if calibration is None and needs_calibration(config):
        raise ConfigError(
            "this configuration needs calibration images (data-aware pruning, activation-aware "
            "low-rank or w8a8); pass a Calibration built from the calib split"
        )
    report = {} if report is None else report

    if config.prune_heads_items or config.prune_mlp_items:
        crit = methods.prune_criterion
        scores = (
            unit_scores(model, layout, crit)
            if crit == "magnitude"
            else calibration.cached(("unit_scores", id(model), crit), lambda: unit_scores(model, layout, crit, calibration.x, calibration.y))
        )
        for name, ratio in config.prune_heads_items:
            prune_heads(student.get_submodule(name), ratio, where=name, scores=scores[name])
        for name, ratio in config.prune_mlp_items:
            prune_mlp(student.get_submodule(name), ratio, where=name, scores=scores[name])

    ranked = [(u.name, config.linear_for(u.name).rank) for u in layout.linears if config.linear_for(u.name).rank]
    if ranked:
        reference = copy.deepcopy(student) if methods.lowrank == "aa-residual" else None
        refine = report.setdefault("lowrank", {})
        for name, rank in ranked:
            layer = student.get_submodule(name)
            if methods.lowrank == "svd":
                new = factorize(layer, rank, where=name)
            else:
                x = capture_inputs(student, [name], calibration.x)[name]
                if methods.lowrank == "aa":
                    new = factorize_aa(layer, rank, x, methods.damping, where=name)
                else:
                    x_ref = capture_inputs(reference, [name], calibration.x)[name]
                    new, refine[name] = factorize_aa_residual(layer, rank, x, x_ref, methods, where=name)
            _set(student, name, new)

    if config.distill_steps:
        if train_data is None:
            raise ConfigError("distill_steps > 0 needs the training split, which was not given")
        for p in student.parameters():
            p.requires_grad_(True)
        report["distill_loss"] = distill(student, model, train_data, config.distill_steps, DistillSettings.from_methods(methods), seed)

    precisions = {name: spec.precision for name, spec in config.linear_items if spec.precision != "fp32"}
    if precisions:
        quantize_model(student, precisions, methods, None if calibration is None else calibration.x)
    for p in student.parameters():
        p.requires_grad_(False)
    return student.eval()

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
import time
from dataclasses import replace

import torch
from torch import nn

from vitune.compression.calibrate import Calibration, blocks_chain, capture_inputs, run_capturing, run_chunked
from vitune.compression.config import CompressionConfig
from vitune.compression.distill import DistillSettings, TeacherTargets, distill
from vitune.compression.lowrank import factorize, factorize_aa, factorize_aa_residual, factorize_shapes
from vitune.compression.prune import prune_heads, prune_mlp, unit_scores
from vitune.compression.quantize import quantize_model
from vitune.errors import ConfigError
from vitune.models.layers import discover


def _set(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def _factorized(layer: nn.Module, x: torch.Tensor, x_ref: torch.Tensor | None, name: str, rank: int, methods, refine: dict) -> nn.Module:
    """The activation-aware factorization of ``layer`` (the model's ``name``) from its calibration
    inputs ``x`` (rows × in) in the model compressed so far; ``x_ref``: the same rows' inputs in
    the reference (``aa-residual`` only, else None)."""
    if methods.lowrank == "aa":
        return factorize_aa(layer, rank, x, methods.damping, where=name)
    new, refine[name] = factorize_aa_residual(layer, rank, x, x_ref, methods, where=name)
    return new


class _FitOnFirstCall(nn.Module):
    """Stands in for a linear layer during one forward pass of its block over every calibration
    row: its first call fits the layer's replacement on the inputs it receives there (those of
    the model compressed so far, upstream layers of the same block included) and every call
    computes with the replacement."""

    def __init__(self, fit):
        super().__init__()
        self.fit = fit
        self.new: nn.Module | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.new is None:
            self.new = self.fit(x.detach().reshape(-1, x.shape[-1]).to(torch.float32))
        return self.new(x)


@torch.no_grad()
def _lowrank_by_block(student: nn.Module, ranked: list[tuple[str, int]], x: torch.Tensor, methods, refine: dict) -> None:
    """Activation-aware low-rank, block after block: the same inputs as a forward pass of the
    whole model up to each layer (``blocks_chain`` checked that the model runs its blocks as a
    chain), for a fraction of the cost. The calibration batch's hidden states at a block's
    entry, in the model compressed so far and in the reference (the model before low-rank), are
    carried from block to block. A block with ranked layers is run once in each model: the
    reference's pass records all its layers' inputs; in the student's pass (every calibration
    row at once) each ranked layer is fitted when the pass reaches it
    (:class:`_FitOnFirstCall`), so the layers after it in the block receive the new layer's
    outputs, as in a pass of the compressed model. Two block passes per block, where capturing
    each layer's inputs in a pass of its own took four to five (DeiT-Small, 64 images: block
    passes 13.8 → 7.0 s of a candidate's compression, the result bit for bit the same)."""
    reference = copy.deepcopy(student) if methods.lowrank == "aa-residual" else None
    by_block: dict[int, list[tuple[str, int]]] = {}
    for name, rank in ranked:
        by_block.setdefault(int(name.split(".")[1]), []).append((name, rank))
    first, last = min(by_block), max(by_block)
    hidden = capture_inputs(student, [f"blocks.{first}"], x, flat=False)[f"blocks.{first}"]  # the same in both: nothing before is compressed
    hidden_ref = hidden
    for i in range(first, last + 1):
        block, items = student.blocks[i], by_block.get(i, [])
        if not items:  # a block left as it is between ranked ones
            hidden = run_chunked(block, hidden)
            if reference is not None:
                hidden_ref = run_chunked(reference.blocks[i], hidden_ref)
            continue
        rels = [name.split(".", 2)[2] for name, _ in items]
        ref_inputs: dict[str, torch.Tensor] = {}
        if reference is not None:  # the reference does not change while its block is compressed
            ref_inputs, hidden_ref = run_capturing(reference.blocks[i], rels, hidden_ref)
        stand_ins = {}
        for (name, rank), rel in zip(items, rels):
            layer = student.get_submodule(name)
            stand_ins[name] = (layer, _FitOnFirstCall(
                lambda xs, layer=layer, name=name, rank=rank, rel=rel:
                _factorized(layer, xs, ref_inputs.get(rel), name, rank, methods, refine)))
            _set(student, name, stand_ins[name][1])
        try:
            hidden = block(hidden)
        finally:
            for name, (layer, stand_in) in stand_ins.items():
                _set(student, name, stand_in.new if stand_in.new is not None else layer)
        missing = [name for name, (_, stand_in) in stand_ins.items() if stand_in.new is None]
        if missing:
            raise RuntimeError(f"module {missing[0]!r} was never called on the calibration batch")


def needs_calibration(config: CompressionConfig, shapes_only: bool = False) -> bool:
    m = config.methods
    prunes = bool(config.prune_heads_items or config.prune_mlp_items)
    ranks = any(spec.rank is not None for _, spec in config.linear_items)
    w8a8 = not shapes_only and any(spec.precision == "w8a8" for _, spec in config.linear_items)
    return (prunes and m.prune_criterion != "magnitude") or (ranks and m.lowrank != "svd") or w8a8


def compress_structural(model: nn.Module, config: CompressionConfig) -> nn.Module:
    """``config``'s candidate with its shapes and dtypes only: low-rank factors sliced from the
    weights (:func:`~vitune.compression.lowrank.factorize_shapes`, no SVD), magnitude pruning,
    placeholder ``w8a8`` activation scales (no calibration forward), no refinement and no
    distillation, at a fraction of the compression time (a mixed DeiT-B candidate: ~0.2 s warm). What
    builds, tuning and latency need (the same kernels), not what accuracy needs."""
    fast = replace(config.methods, lowrank="svd", prune_criterion="magnitude", act_calibration="minmax", refine_steps=0)
    return compress(model, config.replace(methods=fast, distill_steps=0), shapes_only=True)


def compress(
    model: nn.Module,
    config: CompressionConfig,
    train_data=None,
    calibration: Calibration | None = None,
    seed: int = 0,
    report: dict | None = None,
    shapes_only: bool = False,
) -> nn.Module:
    """The compressed copy of ``model``; ``report`` (if given) receives per-layer details.
    ``shapes_only``: plain-SVD low-rank layers get factors of the right shapes, not fitted, and
    ``w8a8`` layers placeholder activation scales (:func:`compress_structural`)."""
    layout = discover(model)
    config.validate(layout)
    student = copy.deepcopy(model).eval()
    if config.is_identity:
        return student
    methods = config.methods
    if calibration is None and needs_calibration(config, shapes_only):
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
        refine = report.setdefault("lowrank", {})
        if methods.lowrank == "svd":
            for name, rank in ranked:
                _set(student, name, (factorize_shapes if shapes_only else factorize)(student.get_submodule(name), rank, where=name))
        elif calibration.cached(("blocks_chain", id(model)), lambda: blocks_chain(model, calibration.x)):
            _lowrank_by_block(student, ranked, calibration.x, methods, refine)
        else:  # each layer's inputs from a forward pass of the whole model up to it
            reference = copy.deepcopy(student) if methods.lowrank == "aa-residual" else None
            for name, rank in ranked:
                inputs = capture_inputs(student, [name], calibration.x)[name]
                x_ref = None if reference is None else capture_inputs(reference, [name], calibration.x)[name]
                _set(student, name, _factorized(student.get_submodule(name), inputs, x_ref, name, rank, methods, refine))

    if config.distill_steps:
        if train_data is None:
            raise ConfigError("distill_steps > 0 needs the training split, which was not given")
        for p in student.parameters():
            p.requires_grad_(True)
        settings = DistillSettings.from_methods(methods)
        targets = None
        if calibration is not None:  # the teacher's side once per study (it never depends on the student)
            teacher = replace(settings, precision="float32")  # nor on the student's precision
            targets = calibration.cached(("teacher_targets", id(model), id(train_data), teacher, seed),
                                         lambda: TeacherTargets(model, train_data, teacher, seed))
        t0 = time.perf_counter()
        report["distill_loss"] = distill(student, model, train_data, config.distill_steps, settings, seed, targets)
        report["distill_s"] = time.perf_counter() - t0

    precisions = {name: spec.precision for name, spec in config.linear_items if spec.precision != "fp32"}
    if precisions:
        quantize_model(student, precisions, methods, None if calibration is None else calibration.x, placeholder_scales=shapes_only)
    for p in student.parameters():
        p.requires_grad_(False)
    return student.eval()

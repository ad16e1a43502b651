"""The block lookup table: every distinct transformer-block variant measured once, then summed.

A candidate splits into *parts*: the frame (the model with no blocks: patch embedding, tokens,
final norm, head) and each transformer block. A part's key hashes its structure (every
module's class, tensor shapes and dtypes) and its input shape; the table maps key → latency
measured through the same path as whole models (``torch.export`` → Relax → build with the
target's tuning mode → timed by the target's runner). Tables are per target and tuning mode and
shared by every model and study on that target.

Prediction: ``latency = scale · Σ parts + overhead``, with ``scale`` and ``overhead`` fitted by
least squares on whole-model measurements (a part timed alone pays one call's overhead that it
does not pay inside a model, so ``overhead`` is usually negative). A line that is not positive
over the samples (noisy timings of models of about one size can tilt it) gives way to the
proportional fit ``ratio · Σ parts``; a candidate so much smaller than every sample that the line
reads zero or less is predicted by the proportional fit too. A part never seen is measured on demand and added to the table;
where the target cannot be measured, that is a failed prediction naming the part.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from vitune.costmodels.model import CostModel, fit_positive_line, positive, register_cost_model
from vitune.costmodels.workloads import _tensor_sig, forward_with_hooks, structure_hash
from vitune.jsontable import JsonTable


@dataclass(frozen=True)
class Part:
    key: str
    name: str  # "frame" or "blocks.3"
    module: nn.Module
    example: torch.Tensor


def _frame(model: nn.Module) -> nn.Module:
    frame = copy.copy(model)
    frame._modules = dict(model._modules)
    frame._modules["blocks"] = nn.Sequential()
    return frame


def parts(model: nn.Module, example: torch.Tensor) -> list[Part]:
    """The frame and the blocks of a timm-style ViT, each with the input it receives."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Sequential) or not len(blocks):
        raise ValueError("the block table needs a ViT with a `blocks` nn.Sequential")
    inputs: dict[int, torch.Tensor] = {}
    handles = [b.register_forward_pre_hook(lambda m, a, i=i: inputs.__setitem__(i, torch.zeros_like(a[0]))) for i, b in enumerate(blocks)]
    forward_with_hooks(model, example, handles)
    frame = _frame(model)
    own = ((n, m) for n, m in frame.named_modules() if n != "blocks" and not n.startswith("blocks."))  # (they are empty)
    out = [Part(structure_hash(_tensor_sig(example), own, 20), "frame", frame, example)]
    for i, block in enumerate(blocks):
        out.append(Part(structure_hash(_tensor_sig(inputs[i]), block.named_modules(), 20), f"blocks.{i}", block, inputs[i]))
    return out


class BlockTable(JsonTable):
    """Part key → {latency_ms, spread_ms, name, measured_at, unsettled, database}, for one target
    and tuning mode. An entry measured with kernels the tuning database has changed since (see
    :meth:`~vitune.costmodels.samples.CostContext.current`) is not held: it is measured again."""

    def __init__(self, context):
        super().__init__(context.directory / f"blocks-{context.tuning}.json")  # (see LutModel.table)
        self.measured = 0  # entries this process measured

    def holds(self, key: str, context) -> bool:
        entry = self.data.get(key)
        return entry is not None and context.is_current(entry.get("unsettled", -1), entry.get("database", ""))

    def fill(self, wanted: list[Part], context) -> None:
        """Measure the parts of ``wanted`` the table lacks, together (interleaved timing rounds,
        so one burst of load cannot skew one block against the others); raises on a failure."""
        from vitune.targets.measure import measure_many

        missing = list({p.key: p for p in wanted if not self.holds(p.key, context)}.values())
        if not missing:
            return
        version = context.database_version()  # before the builds, which may tune (as CostContext.measure_candidates)
        measured = measure_many([p.module for p in missing], [p.example for p in missing], context.profile, context.tuner, context.rounds)
        for part, m in zip(missing, measured):
            if m.ok:
                self.put(part.key, {"latency_ms": m.latency_ms, "spread_ms": m.spread_ms, "name": part.name, "measured_at": time.time(),
                                    "unsettled": context.unsettled(m), "database": version})
                self.measured += 1
        self.save()
        for part, m in zip(missing, measured):
            if not m.ok:
                raise RuntimeError(f"{part.name} is not in the block table and measuring it failed: {m.error}")


@register_cost_model("lut")
class LutModel(CostModel):
    fit_samples = 24  # the table's scale and overhead are two numbers: a few dozen models pin them

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.scale, self.overhead_ms, self.sigma_ms = 1.0, 0.0, None
        self.ratio = 1.0  # the proportional fit: whole model / sum of its parts
        self._tables: dict = {}

    def table(self, context) -> BlockTable:
        """The block table of ``context``'s target and tuning mode (one instance per file)."""
        path = context.directory / f"blocks-{context.tuning}.json"
        if path not in self._tables:
            self._tables[path] = BlockTable(context)
        return self._tables[path]

    def fit(self, samples, context):
        """Fit scale and overhead on the newest :attr:`fit_samples` samples (their parts are measured
        into the table first where missing: bounding the samples bounds that work)."""
        from vitune.compression.config import CompressionConfig

        table = self.table(context)
        used = samples[-self.fit_samples:]
        lacking = [s for s in used if not all(table.holds(k, context) for k in s.blocks)]  # entries are added on first sight
        self.warm([context.build(CompressionConfig.from_json(s.config)) for s in lacking], context)
        sums, ys = [], []
        for s in used:
            sums.append(sum(table.data[k]["latency_ms"] for k in s.blocks))
            ys.append(s.latency_ms)
        x, y = np.asarray(sums), np.asarray(ys)
        if len(x):
            self.scale, self.overhead_ms, self.ratio = fit_positive_line(x, y)
        if len(x) >= 3:
            self.sigma_ms = float(np.std(y - (self.scale * x + self.overhead_ms)))
        self.fitted_samples = len(x)
        return self

    def warm(self, candidates, context, chunk: int = 24) -> None:
        """Measure the table's missing parts of ``candidates``, ``chunk`` parts timed together."""
        table = self.table(context)
        missing = list({p.key: p for c in candidates for p in parts(c, context.example) if not table.holds(p.key, context)}.values())
        for start in range(0, len(missing), chunk):
            table.fill(missing[start:start + chunk], context)

    def _predict(self, candidate, context):
        table, pieces = self.table(context), parts(candidate, context.example)
        table.fill(pieces, context)  # a part never seen is measured now
        total = sum(float(table.data[p.key]["latency_ms"]) for p in pieces)
        return positive(self.scale, self.overhead_ms, self.ratio, total), self.sigma_ms, "lut"

    def state(self) -> dict:
        return {"scale": self.scale, "overhead_ms": self.overhead_ms, "sigma_ms": self.sigma_ms, "ratio": self.ratio}

    def set_state(self, state: dict) -> None:
        self.scale, self.overhead_ms, self.sigma_ms = state["scale"], state["overhead_ms"], state.get("sigma_ms")
        self.ratio = float(state.get("ratio", self.scale))

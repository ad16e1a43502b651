"""Knowledge-distillation recovery of a compressed candidate, the original model as teacher.

Contract: ``distill(student, teacher, dataset, steps)`` trains ``student`` in place for exactly
``steps`` optimizer steps on batches drawn from ``dataset`` (the training split), minimising

    alpha · T² · KL(softmax(teacher / T) ‖ softmax(student / T)) + (1 − alpha) · CE(student, labels)
    + hidden_weight · ‖tokens_student − tokens_teacher‖² / (numel · Var(tokens_teacher))

with AdamW; ``tokens`` are the final-block token features (``forward_features``), whose width
pruning never changes. Settings come from :class:`CompressionMethods` (``kd_*``). It is
deterministic for a given ``seed``. With ``kd_precision = "bfloat16"`` the student's forward and
backward run under CPU bfloat16 autocast (matmuls and linears in bfloat16, the losses, the
weights and AdamW's state in float32): on a CPU with native bfloat16 (AVX512-BF16, AMX) a step
at 224 px takes about half the time; ``bench/distill_precision.py`` compares both, the
accuracy after distillation included. The teacher is never updated. Only floating-point trainable
parameters are updated (quantization happens after distillation).

The teacher's side of each step (the batch it draws, the teacher's soft targets and token
features on it) depends on the teacher, the training split, the settings and the seed, never on
the student: :class:`TeacherTargets` computes it once per step and keeps it, so every candidate
of a study that distils pays for the teacher's forward passes once (the pipeline keeps one in
the calibration's per-study cache). The result is the same as recomputing them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from vitune.data.splits import sample_batch


@dataclass(frozen=True)
class DistillSettings:
    temperature: float = 2.0  # softening temperature T of both distributions
    alpha: float = 0.9  # weight of the KL term (1 − alpha weighs cross-entropy on labels)
    lr: float = 3e-4  # AdamW learning rate
    batch_size: int = 64
    weight_decay: float = 0.0
    hidden_weight: float = 0.0  # weight of token distillation; 0 = logits only
    precision: str = "float32"  # the student's forward and backward: float32, or bfloat16 autocast

    @classmethod
    def from_methods(cls, methods) -> "DistillSettings":
        return cls(methods.kd_temperature, methods.kd_alpha, methods.kd_lr, methods.kd_batch_size, 0.0, methods.kd_hidden_weight,
                   methods.kd_precision)


class TeacherTargets:
    """The teacher's side of distillation, step by step: step ``i``'s batch, the teacher's
    softened distribution on it and (with ``hidden_weight > 0``) its final token features.
    Steps are computed in order when first asked for and kept (batch indices and distributions:
    small); token features are kept up to ``keep_bytes`` in all and recomputed past that (they
    are large at 224 px: 9.7 MB per step of 64 images on DeiT-Tiny, 39 MB on DeiT-B; 512 MiB by default).
    ``forwards`` counts the teacher's forward passes."""

    def __init__(self, teacher: nn.Module, dataset, settings: DistillSettings, seed: int = 0, keep_bytes: int = 1 << 29):
        self.teacher, self.dataset, self.settings, self.seed = teacher, dataset, settings, seed
        self.keep_bytes = keep_bytes
        self.forwards = 0
        self._gen = torch.Generator().manual_seed(seed)
        self._idx: list[torch.Tensor] = []
        self._soft: list[torch.Tensor] = []
        self._tokens: dict[int, torch.Tensor] = {}
        self._kept_bytes = 0

    def made_for(self, teacher: nn.Module, dataset, settings: DistillSettings, seed: int) -> bool:
        """Whether these targets serve ``settings`` (the student's precision aside: the teacher
        always runs in float32)."""
        return (self.teacher is teacher and self.dataset is dataset and self.seed == seed
                and replace(self.settings, precision=settings.precision) == settings)

    @torch.no_grad()
    def _run_teacher(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        self.teacher.eval()
        self.forwards += 1
        if self.settings.hidden_weight > 0:
            tokens = self.teacher.forward_features(x)
            return tokens, self.teacher.forward_head(tokens)
        return None, self.teacher(x)

    def step(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(images, labels, teacher's softened distribution, teacher's tokens or None)`` of
        step ``i`` (0-based)."""
        n = len(self.dataset)
        while len(self._idx) < i:
            self.step(len(self._idx))
        if i == len(self._idx):  # a new step: draw its batch and run the teacher on it
            idx = torch.randint(0, n, (min(self.settings.batch_size, n),), generator=self._gen)
            x, y = sample_batch(self.dataset, idx)
            tokens, logits = self._run_teacher(x)
            self._idx.append(idx)
            self._soft.append(F.softmax(logits / self.settings.temperature, dim=-1))
            if tokens is not None and self._kept_bytes + tokens.nbytes <= self.keep_bytes:
                self._tokens[i] = tokens
                self._kept_bytes += tokens.nbytes
            return x, y, self._soft[i], tokens
        x, y = sample_batch(self.dataset, self._idx[i])
        tokens = self._tokens.get(i)
        if tokens is None and self.settings.hidden_weight > 0:
            tokens, _ = self._run_teacher(x)
        return x, y, self._soft[i], tokens


def distill(
    student: nn.Module,
    teacher: nn.Module,
    dataset,
    steps: int,
    settings: DistillSettings = DistillSettings(),
    seed: int = 0,
    targets: TeacherTargets | None = None,
) -> list[float]:
    """Run ``steps`` distillation steps; return the loss of each step. ``targets`` (made for
    this teacher, dataset, settings and seed) serves the teacher's side from what earlier calls
    computed; without it the teacher runs at every step."""
    if steps <= 0:
        return []
    params = [p for p in student.parameters() if p.requires_grad and p.is_floating_point()]
    if not params:
        return []
    if targets is None:
        targets = TeacherTargets(teacher, dataset, settings, seed, keep_bytes=0)
    elif not targets.made_for(teacher, dataset, settings, seed):
        raise ValueError("these teacher targets were made for another teacher, training split, distillation settings or seed")
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    t = settings.temperature
    hidden = settings.hidden_weight > 0
    losses: list[float] = []
    low = settings.precision == "bfloat16"
    student.train()
    for i in range(steps):
        x, y, soft, t_tokens = targets.step(i)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=low):
            s_tokens = student.forward_features(x) if hidden else None
            logits = student.forward_head(s_tokens) if hidden else student(x)
        logits = logits.float()  # the losses in float32
        if s_tokens is not None:
            s_tokens = s_tokens.float()
        kl = F.kl_div(F.log_softmax(logits / t, dim=-1), soft, reduction="batchmean") * t * t
        loss = settings.alpha * kl + (1 - settings.alpha) * F.cross_entropy(logits, y)
        if hidden:
            loss = loss + settings.hidden_weight * F.mse_loss(s_tokens, t_tokens) / t_tokens.var().clamp(min=1e-12)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    student.eval()
    return losses

"""Knowledge-distillation recovery of a compressed candidate, the original model as teacher.

Contract: ``distill(student, teacher, dataset, steps)`` trains ``student`` in place for exactly
``steps`` optimizer steps on batches drawn from ``dataset`` (the training split), minimising

    alpha · T² · KL(softmax(teacher / T) ‖ softmax(student / T)) + (1 − alpha) · CE(student, labels)
    + hidden_weight · ‖tokens_student − tokens_teacher‖² / (numel · Var(tokens_teacher))

with AdamW; ``tokens`` are the final-block token features (``forward_features``), whose width
pruning never changes. Settings come from :class:`CompressionMethods` (``kd_*``). It is
deterministic for a given ``seed``. The teacher is never updated. Only floating-point trainable
parameters are updated (quantization happens after distillation).
"""

from __future__ import annotations

from dataclasses import dataclass

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

    @classmethod
    def from_methods(cls, methods) -> "DistillSettings":
        return cls(methods.kd_temperature, methods.kd_alpha, methods.kd_lr, methods.kd_batch_size, 0.0, methods.kd_hidden_weight)


def distill(
    student: nn.Module,
    teacher: nn.Module,
    dataset,
    steps: int,
    settings: DistillSettings = DistillSettings(),
    seed: int = 0,
) -> list[float]:
    """Run ``steps`` distillation steps; return the loss of each step."""
    if steps <= 0:
        return []
    teacher.eval()
    params = [p for p in student.parameters() if p.requires_grad and p.is_floating_point()]
    if not params:
        return []
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    n, t = len(dataset), settings.temperature
    losses: list[float] = []
    student.train()
    for _ in range(steps):
        idx = torch.randint(0, n, (min(settings.batch_size, n),), generator=gen)
        x, y = sample_batch(dataset, idx)
        hidden = settings.hidden_weight > 0
        with torch.no_grad():
            t_tokens = teacher.forward_features(x) if hidden else None
            soft = F.softmax((teacher.forward_head(t_tokens) if hidden else teacher(x)) / t, dim=-1)
        s_tokens = student.forward_features(x) if hidden else None
        logits = student.forward_head(s_tokens) if hidden else student(x)
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

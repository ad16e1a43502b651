"""Size of a (compressed) model: parameter count and bytes of everything it ships."""

from __future__ import annotations

from torch import nn


def model_stats(model: nn.Module) -> tuple[int, int]:
    """Return ``(params, size_bytes)`` over the model's state dict.

    ``params`` counts every stored weight element (int8 weights and their scales included);
    ``size_bytes`` is their storage at the stored dtype (int8 = 1 byte, fp16 = 2, fp32 = 4).
    """
    params = size = 0
    for tensor in model.state_dict().values():
        params += tensor.numel()
        size += tensor.numel() * tensor.element_size()
    return int(params), int(size)

"""Loading the model a study names."""

from __future__ import annotations

import subprocess
import sys

from vitune.models.zoo import _timm_model, state_dict_sha256
from vitune.search.studyfile import ModelSpec

SPEC = ModelSpec(source="timm", name="vit_tiny_patch16_224", img_size=32, num_classes=3)


def test_a_random_init_timm_model_has_the_same_weights_in_every_process():
    """Without pretrained weights or a checkpoint, a study resumed in another process (or an
    export applied later) must see the model it searched on."""
    import torch

    torch.manual_seed(1234)  # whatever the caller's RNG state ...
    mine = state_dict_sha256(_timm_model(SPEC))
    after = torch.rand(1)
    torch.manual_seed(1234)
    assert torch.equal(after, torch.rand(1))  # ... it is left as it was
    code = ("from vitune.models.zoo import _timm_model, state_dict_sha256; from vitune.search.studyfile import ModelSpec; "
            f"print(state_dict_sha256(_timm_model(ModelSpec(**{SPEC.__dict__!r}))))")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout.strip()
    assert other == mine

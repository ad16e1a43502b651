import pytest

from vitune.errors import ConfigError
from vitune.models.default import build_digits_vit
from vitune.models.layers import LINEAR_ROLES, discover, kept_count


def test_discovery_on_default_model():
    layout = discover(build_digits_vit())
    assert layout.depth == 4
    assert [u.name for u in layout.linears[:4]] == [f"blocks.0.{r}" for r in LINEAR_ROLES]
    qkv = layout.linear("blocks.2.attn.qkv")
    assert (qkv.in_features, qkv.out_features) == (64, 192)
    fc1 = layout.linear("blocks.3.mlp.fc1")
    assert (fc1.in_features, fc1.out_features) == (64, 256)
    assert layout.head("blocks.1.attn").num_heads == 4 and layout.head("blocks.1.attn").head_dim == 16
    assert layout.mlp("blocks.0.mlp").hidden == 256
    assert len(layout.unit_names()) == 4 * 6


def test_discovery_on_random_init_deit_tiny():
    import timm

    layout = discover(timm.create_model("deit_tiny_patch16_224", pretrained=False))
    assert layout.depth == 12
    assert len(layout.linears) == 48
    assert layout.linear("blocks.11.mlp.fc2").in_features == 768
    assert layout.head("blocks.0.attn").num_heads == 3


def test_unknown_unit_names_the_layer():
    layout = discover(build_digits_vit())
    with pytest.raises(ConfigError, match=r"blocks\.9\.mlp\.fc1.*blocks 0\.\.3"):
        layout.linear("blocks.9.mlp.fc1")


def test_not_a_vit_is_rejected():
    import torch

    with pytest.raises(ConfigError, match="no 'blocks'"):
        discover(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("total,ratio,kept", [(4, 0.0, 4), (4, 0.25, 3), (4, 0.5, 2), (4, 0.9, 1), (256, 0.5, 128)])
def test_kept_count(total, ratio, kept):
    assert kept_count(total, ratio) == kept

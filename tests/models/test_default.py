"""The embedded default model: shipped weights checked by hash, training as the fallback."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from vitune.models import default
from vitune.models.default import DigitsRecipe, load_or_train_default, shipped_weights
from vitune.models.zoo import state_dict_sha256


def test_the_shipped_weights_are_the_recipes_and_load_without_training(digits, tmp_path, monkeypatch):
    monkeypatch.setenv("VITUNE_CACHE_DIR", str(tmp_path))
    model, meta = shipped_weights(DigitsRecipe())
    assert model is not None, meta
    assert meta["weights_sha256"] == default.SHIPPED[DigitsRecipe().key] == state_dict_sha256(model)[:16]
    monkeypatch.setattr(default, "train_digits_vit", lambda *a, **k: pytest.fail("trained although weights ship"))
    loaded, info = load_or_train_default(digits, progress=False)
    assert state_dict_sha256(loaded)[:16] == meta["weights_sha256"] and info["checkpoint"] == meta["shipped"]


TINY = DigitsRecipe(embed_dim=16, depth=1, num_heads=2, mlp_ratio=1.0, epochs=1)


def test_weights_that_do_not_match_their_hash_are_not_used_the_model_is_trained(digits, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VITUNE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(default, "WEIGHTS_DIR", tmp_path)
    other = default.build_digits_vit(TINY)
    torch.save({"state_dict": other.state_dict(), "meta": {}}, tmp_path / f"digits-vit-{TINY.key}.pt")
    monkeypatch.setitem(default.SHIPPED, TINY.key, "0" * 16)  # what it should hold: not what it holds
    model, why = shipped_weights(TINY)
    assert model is None and f"holds weights {state_dict_sha256(other)[:16]}, not {'0' * 16}" in why
    trained, info = load_or_train_default(digits, TINY, progress=True)
    assert "training the default model" in capsys.readouterr().out and not info["cached"]
    assert default.checkpoint_path(TINY).is_file()  # cached for the next study
    (tmp_path / f"digits-vit-{TINY.key}.pt").write_bytes(b"not a checkpoint")
    assert shipped_weights(TINY)[0] is None and "cannot be loaded" in shipped_weights(TINY)[1]


@pytest.mark.slow
def test_training_from_scratch_reproduces_the_shipped_weights(digits):
    """The committed training is what made the shipped file (same torch, 2 threads; minutes)."""
    model = default.train_digits_vit(digits, DigitsRecipe(), progress=False)
    assert state_dict_sha256(model)[:16] == default.SHIPPED[DigitsRecipe().key]


def test_a_changed_recipe_has_no_shipped_weights():
    changed = dataclasses.replace(DigitsRecipe(), epochs=151)
    assert shipped_weights(changed)[0] is None and "no shipped weights" in shipped_weights(changed)[1]

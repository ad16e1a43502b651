"""The embedded default model: shipped weights checked by hash, training as the fallback."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from vitune.models import default
from vitune.data.digits import load_digits_splits
from vitune.data.splits import accuracy
from vitune.models.default import RECIPES, DigitsRecipe, load_or_train_default, shipped_weights
from vitune.models.zoo import state_dict_sha256


# DeiT-Tiny's 12 blocks from scratch on 1,078 digits at 224 px (40 epochs, 38 minutes): 0.8922.
FLOOR = {"digits_deit_tiny": 0.85}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_embedded_model_ships_weights_that_load_without_training(name, tmp_path, monkeypatch):
    monkeypatch.setenv("VITUNE_CACHE_DIR", str(tmp_path))
    recipe = RECIPES[name]
    model, meta = shipped_weights(recipe)
    assert model is not None, meta
    assert meta["weights_sha256"] == default.SHIPPED[recipe.key] == state_dict_sha256(model)[:16]
    monkeypatch.setattr(default, "train_digits_vit", lambda *a, **k: pytest.fail("trained although weights ship"))
    splits = load_digits_splits(image_size=recipe.image_size)
    loaded, info = load_or_train_default(splits, recipe, progress=False)
    assert state_dict_sha256(loaded)[:16] == meta["weights_sha256"] and info["checkpoint"] == meta["shipped"]
    assert accuracy(loaded, splits.val) == pytest.approx(meta["val_accuracy"])  # the data it reads is the data it was trained on
    assert accuracy(loaded, splits.val) > FLOOR.get(name, 0.95)


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
@pytest.mark.parametrize("name", sorted(RECIPES))
def test_training_from_scratch_reproduces_the_shipped_weights(name):
    """The committed training is what made the shipped file (same torch, 2 threads; minutes)."""
    recipe = RECIPES[name]
    model = default.train_digits_vit(load_digits_splits(image_size=recipe.image_size), recipe, progress=False)
    assert state_dict_sha256(model)[:16] == default.SHIPPED[recipe.key]


def test_a_changed_recipe_has_no_shipped_weights():
    changed = dataclasses.replace(DigitsRecipe(), epochs=151)
    assert shipped_weights(changed)[0] is None and "no shipped weights" in shipped_weights(changed)[1]


def test_a_recipe_with_float16_weights_trains_rounds_and_stores_them_in_half_the_bytes(digits, tmp_path, monkeypatch):
    monkeypatch.setenv("VITUNE_CACHE_DIR", str(tmp_path))
    half = dataclasses.replace(TINY, weights="float16")
    assert half.key != TINY.key and TINY.key == dataclasses.replace(TINY, weights="float32").key
    model, info = load_or_train_default(digits, half, progress=False)
    for name, t in model.state_dict().items():
        assert t.dtype == torch.float32 and torch.equal(t, t.half().float()), name  # rounded, kept in float32
    stored = torch.load(default.checkpoint_path(half), weights_only=True)["state_dict"]
    assert {t.dtype for t in stored.values() if t.is_floating_point()} == {torch.float16}
    again, cached = load_or_train_default(digits, half, progress=False)
    assert cached["cached"] and state_dict_sha256(again) == state_dict_sha256(model)
    assert accuracy(again, digits.val) == pytest.approx(info["val_accuracy"])


def test_reading_the_model_after_each_epoch_changes_nothing_the_training_does(digits):
    from torch.utils.data import TensorDataset

    digits = dataclasses.replace(digits, train=TensorDataset(*(t[:256] for t in digits.train.tensors)))
    seen = []
    three = dataclasses.replace(TINY, epochs=3)  # (two warm-up epochs)
    watched = default.train_digits_vit(digits, three, progress=False,
                                       after_epoch=lambda epoch, model, loss: seen.append((epoch, accuracy(model, digits.val), loss)))
    assert [e for e, _, _ in seen] == [0, 1, 2] and all(0 <= a <= 1 and loss > 0 for _, a, loss in seen)
    assert state_dict_sha256(watched) == state_dict_sha256(default.train_digits_vit(digits, three, progress=False))

import numpy as np
import pytest
import torch

from vitune.data.splits import SHIFTS, SPLIT_NAMES, ShiftedCopies, accuracy, shifted, split_indices


def test_digits_splits_are_disjoint_and_deterministic(digits):
    from vitune.data.digits import load_digits_splits

    again = load_digits_splits()
    seen = set()
    for name in SPLIT_NAMES:
        x = digits.get(name).tensors[0]
        assert torch.equal(x, again.get(name).tensors[0])
        rows = {tuple(r.flatten().tolist()) for r in x}
        seen_before = len(seen)
        seen |= rows
        assert len(seen) == seen_before + len(rows) or name == "train"  # digits has a few duplicate images
    sizes = {n: len(digits.get(n)) for n in SPLIT_NAMES}
    assert sum(sizes.values()) == 1797 and sizes["test"] > 250 and sizes["val"] > 250


def test_upscaled_digits_are_the_same_images_and_splits_larger(digits):
    from vitune.data.digits import load_digits_splits

    big = load_digits_splits(image_size=32)
    assert big.input_shape == (1, 32, 32) and big.name == "digits32"
    for name in SPLIT_NAMES:
        x, y = big.get(name).tensors
        assert x.shape[1:] == (1, 32, 32) and torch.equal(y, digits.get(name).tensors[1])
        pooled = torch.nn.functional.avg_pool2d(x, 4).flatten()  # bilinear 4x up, then 4x4 means: a blur of the 8x8 image
        assert torch.corrcoef(torch.stack([pooled, digits.get(name).tensors[0].flatten()]))[0, 1] > 0.95
    with pytest.raises(ValueError, match="8 or more"):
        load_digits_splits(image_size=4)


def test_split_indices_partition():
    labels = np.repeat(np.arange(5), 40)
    parts = split_indices(labels, {"train": 0.5, "calib": 0.1, "val": 0.2, "test": 0.2}, seed=3)
    union = np.concatenate(list(parts.values()))
    assert len(union) == len(set(union.tolist())) == 200
    for idx in parts.values():  # stratified: every class in every split
        assert set(labels[idx]) == set(range(5))


def make_folder(root, classes=3, per_class=10, size=32):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        d = root / f"class_{c}"
        d.mkdir(parents=True)
        for i in range(per_class):
            arr = (rng.random((size, size, 3)) * 80 + c * 80).astype(np.uint8)
            Image.fromarray(arr).save(d / f"{i}.png")
    return root


def test_timm_model_on_imagefolder(tmp_path):
    from vitune.compression.config import CompressionConfig, LinearConfig
    from vitune.compression.pipeline import compress
    from vitune.models.zoo import load_workspace
    from vitune.search.studyfile import DataSpec, ModelSpec

    root = make_folder(tmp_path / "images")
    ws = load_workspace(
        ModelSpec(source="timm", name="deit_tiny_patch16_224", num_classes=3),
        DataSpec(source="imagefolder", root=str(root), fractions=(("train", 0.4), ("calib", 0.2), ("val", 0.2), ("test", 0.2))),
    )
    assert ws.data.input_shape == (3, 224, 224) and ws.data.num_classes == 3
    assert len(ws.data.val) == 6 and len(ws.data.test) == 6
    assert 0.0 <= accuracy(ws.model, ws.data.val) <= 1.0
    from vitune.compression.calibrate import Calibration

    config = CompressionConfig.make({"blocks.5.mlp.fc1": LinearConfig("int8", 32)}, prune_heads={"blocks.5.attn": 0.34})
    small = compress(ws.model, config, calibration=Calibration.from_dataset(ws.data.calib, 8))
    assert small.blocks[5].attn.num_heads == 2
    assert 0.0 <= accuracy(small, ws.data.val) <= 1.0


def test_class_count_mismatch_is_explained(tmp_path):
    from vitune.errors import ConfigError
    from vitune.models.zoo import load_workspace
    from vitune.search.studyfile import DataSpec, ModelSpec

    root = make_folder(tmp_path / "images", classes=2, per_class=6)
    with pytest.raises(ConfigError, match=r"predicts 1000 classes but .* has 2; set \[model\]\.num_classes = 2"):
        load_workspace(ModelSpec(source="timm", name="deit_tiny_patch16_224"), DataSpec(source="imagefolder", root=str(root)))
    with pytest.raises(ConfigError, match="unknown timm model 'no_such_vit'"):
        load_workspace(ModelSpec(source="timm", name="no_such_vit"), DataSpec(source="imagefolder", root=str(root)))


def test_an_unreadable_image_is_named_before_any_work(tmp_path, monkeypatch):
    """A truncated or non-image file anywhere in the folder is one error naming it, up front:
    not every trial failing (val) or apply dying with PIL's traceback (test)."""
    from vitune.data.imagefolder import load_imagefolder_splits
    from vitune.errors import ConfigError

    monkeypatch.setenv("VITUNE_CACHE_DIR", str(tmp_path / "cache"))
    root = make_folder(tmp_path / "images", classes=2, per_class=8)
    bad = root / "class_1" / "broken.png"
    bad.write_bytes((root / "class_1" / "0.png").read_bytes()[:60])  # truncated
    (root / "class_0" / "notes.jpg").write_text("not an image")
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ConfigError, match=r"data root .*: 2 of 18 images cannot be read: .*notes\.jpg \(UnidentifiedImageError.*\); .*broken\.png \(OSError: Truncated File Read\)") as err:
        load_imagefolder_splits(str(root), model, {"train": 0.25, "calib": 0.25, "val": 0.25, "test": 0.25})
    assert "\n" not in str(err.value)
    bad.unlink()
    (root / "class_0" / "notes.jpg").unlink()
    assert load_imagefolder_splits(str(root), model, {"train": 0.25, "calib": 0.25, "val": 0.25, "test": 0.25}).num_classes == 2
    assert len(list((tmp_path / "cache" / "imagechecks").iterdir())) == 1  # the good folder is checked once


def test_imagefolder_images_are_decoded_once_within_the_budget(tmp_path, monkeypatch):
    """Eval transforms are deterministic: a split keeps each image it decoded (the same tensor
    read again), within VITUNE_DECODED_MB; with no budget every read decodes again."""
    import torch

    from vitune.models.zoo import load_workspace
    from vitune.search.studyfile import DataSpec, ModelSpec

    root = make_folder(tmp_path / "images", classes=2, per_class=6)
    spec = (ModelSpec(source="timm", name="vit_tiny_patch16_224", img_size=32, num_classes=2),
            DataSpec(source="imagefolder", root=str(root), fractions=(("train", 0.5), ("calib", 0.0), ("val", 0.25), ("test", 0.25))))
    val = load_workspace(*spec, progress=False).data.val
    first = val[0][0]
    assert val[0][0] is first and len(val.kept) == 1
    monkeypatch.setenv("VITUNE_DECODED_MB", "0")
    val = load_workspace(*spec, progress=False).data.val
    again = val[0][0]
    assert val[0][0] is not again and torch.equal(val[0][0], first) and not val.kept


def test_shifted_copies_of_the_validation_split(digits):
    from torch.utils.data import Dataset

    val = digits.val
    copies = ShiftedCopies(val, 3)
    assert len(copies) == 3 * len(val)
    x, y = copies.tensors
    assert torch.equal(x[: len(val)], val.tensors[0]) and torch.equal(y, val.tensors[1].repeat(3))  # the original first
    one = val.tensors[0][:1]
    dy, dx = SHIFTS[1]
    assert torch.equal(x[len(val)], shifted(one, dy, dx)[0])
    assert torch.equal(shifted(one, dy, dx)[..., 1:, :], one[..., :-1, :])  # moved one row down
    assert not torch.equal(x[len(val)], x[0])

    class Lazy(Dataset):  # a data set without tensors (an ImageFolder) is shifted item by item
        def __len__(self):
            return len(val)

        def __getitem__(self, i):
            return val[i]

    lazy = ShiftedCopies(Lazy(), 3)
    for i in (0, len(val) + 5, 2 * len(val) + 7):
        assert torch.equal(lazy[i][0], x[i]) and int(lazy[i][1]) == int(y[i])
    with pytest.raises(ValueError, match="copies must be 1..9"):
        ShiftedCopies(val, 10)


def test_a_study_reads_its_validation_copies(tmp_path):
    from vitune.models.zoo import load_workspace
    from vitune.search.studyfile import load_study_file

    path = tmp_path / "s.toml"
    path.write_text("[study]\nname='x'\n[data]\nval_copies=2\n")
    spec = load_study_file(path)
    assert spec.data.val_copies == 2
    ws = load_workspace(spec.model, spec.data, progress=False)
    plain = load_workspace(spec.model, load_study_file(path).data.__class__(), progress=False)
    assert len(ws.data.val) == 2 * len(plain.data.val) and len(ws.data.test) == len(plain.data.test)

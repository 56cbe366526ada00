"""Dataset readers on tiny fixtures written in the real on-disk formats, and batch order."""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torchvision.transforms import v2

from scaling.errors import ScalingError, SpecError
from scaling.train import readers
from scaling.train.data import ImageSet, StreamingImageSet, batches
from scaling.train.readers import DATASETS, DatasetInfo, load_dataset

RNG = np.random.default_rng(0)


# -- fixtures in the published formats ---------------------------------------------------


def _pickle(path: Path, obj: object) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # the archives are Python 2 pickles


def write_cifar10(root: Path, per_batch: int = 3) -> dict[str, np.ndarray]:
    """cifar-10-batches-py/: data_batch_1..5, test_batch (rows of 3072 CHW bytes), batches.meta."""
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        rows = RNG.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = RNG.integers(0, 10, per_batch).tolist()
        _pickle(
            base / name,
            {
                "batch_label": name,
                "labels": labels,
                "data": rows,
                "filenames": ["x.png"] * per_batch,
            },
        )
        written[name] = rows
        written[name + "_labels"] = np.array(labels)
    _pickle(
        base / "batches.meta",
        {"label_names": [f"c{i}" for i in range(10)], "num_cases_per_batch": per_batch},
    )
    return written


def write_cifar100(root: Path, n: int = 7) -> dict[str, np.ndarray]:
    base = root / "cifar-100-python"
    base.mkdir(parents=True)
    written = {}
    for name in ("train", "test"):
        rows = RNG.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine, coarse = RNG.integers(0, 100, n).tolist(), RNG.integers(0, 20, n).tolist()
        _pickle(
            base / name,
            {"data": rows, "fine_labels": fine, "coarse_labels": coarse, "filenames": ["x"] * n},
        )
        written[name], written[name + "_labels"] = rows, np.array(fine)
    _pickle(
        base / "meta",
        {
            "fine_label_names": [f"f{i}" for i in range(100)],
            "coarse_label_names": [f"c{i}" for i in range(20)],
        },
    )
    return written


def write_stl10(root: Path, counts: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """stl10_binary/*_X.bin: uint8, each image 3 planes of 96x96 stored column-major."""
    base = root / "stl10_binary"
    base.mkdir(parents=True)
    written = {}
    for part, n in (counts or {"train": 3, "test": 2, "unlabeled": 4}).items():
        images = RNG.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8)  # (N, C, H, W)
        images.transpose(0, 1, 3, 2).tofile(base / f"{part}_X.bin")  # column-major planes
        written[part] = images
        if part != "unlabeled":
            labels = RNG.integers(1, 11, n, dtype=np.uint8)  # 1-based on disk
            labels.tofile(base / f"{part}_y.bin")
            written[part + "_labels"] = labels.astype(np.int64) - 1
    (base / "class_names.txt").write_text("\n".join(f"c{i}" for i in range(10)))
    return written


def write_imagefolder(
    root: Path, sizes: tuple[tuple[int, int], ...] = ((40, 30), (30, 44), (24, 24))
) -> None:
    """root/train/<class>/*.png|jpg and root/val/<class>/*.png, non-square images."""
    for split, classes in (("train", ("cat", "dog", "eel")), ("val", ("cat", "eel"))):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for k, (w, h) in enumerate(sizes):
                pixels = RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{k}.png")
            (root / split / c / "notes.txt").write_text("not an image")


FIXTURES: dict[str, Callable[[Path], object]] = {
    "cifar10": write_cifar10,
    "cifar100": write_cifar100,
    "stl10": write_stl10,
    "imagefolder": write_imagefolder,
    "digits": lambda root: None,
    "synthetic": lambda root: None,
}


@pytest.fixture
def skip_md5(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let torchvision's readers (the reference) accept fixtures whose md5 is not the archive's."""
    from torchvision.datasets import cifar, stl10

    monkeypatch.setattr(cifar.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(cifar, "check_integrity", lambda *a, **k: True)
    monkeypatch.setattr(stl10.STL10, "_check_integrity", lambda self: True)


# -- every registered dataset --------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_every_registered_dataset_loads_as_an_imageset(name: str, tmp_path: Path) -> None:
    if name not in FIXTURES:
        pytest.fail(f"add a fixture writer for dataset {name!r} to FIXTURES")
    FIXTURES[name](tmp_path)
    info = DATASETS[name]
    for split in ("train", "test"):
        ds = load_dataset(name, root=tmp_path, image_size=24, split=split, num_images=40)
        assert isinstance(ds, ImageSet) and len(ds) > 0
        assert ds.images.dtype == torch.uint8 and ds.images.shape[1:] == (3, 24, 24)
        assert ds.labels.dtype == torch.int64 and ds.labels.shape == (len(ds),)
        assert info.num_classes is None or ds.num_classes == info.num_classes
        assert ((ds.labels >= 0) & (ds.labels < ds.num_classes)).all()
        images, labels = ds.batch(torch.tensor([len(ds) - 1, 0]))
        assert torch.equal(images[1], ds.images[0]) and labels[0] == ds.labels[-1]


def test_registering_a_name_twice_is_an_error() -> None:
    with pytest.raises(ValueError, match="already registered"):
        readers.register_dataset(DatasetInfo("digits", 10, 32))(lambda req: None)


def test_unknown_dataset_and_split_are_spec_errors() -> None:
    with pytest.raises(SpecError, match="known: cifar10, cifar100, digits"):
        load_dataset("mnist")
    with pytest.raises(SpecError, match="allowed: train, test$"):
        load_dataset("cifar10", split="unlabeled")


# -- formats, checked against what the fixture wrote and against torchvision ---------------


def test_cifar10_matches_files_and_torchvision(tmp_path: Path, skip_md5: None) -> None:
    written = write_cifar10(tmp_path)
    train = load_dataset("cifar10", root=tmp_path, split="train")
    test = load_dataset(
        "cifar10", root=tmp_path / "cifar-10-batches-py", split="test"
    )  # folder itself
    rows = np.concatenate([written[f"data_batch_{i}"] for i in range(1, 6)])
    assert torch.equal(train.images, torch.from_numpy(rows.reshape(-1, 3, 32, 32)))
    assert torch.equal(test.images.flatten(1), torch.from_numpy(written["test_batch"]))
    for ours, is_train in ((train, True), (test, False)):
        ref = torchvision.datasets.CIFAR10(str(tmp_path), train=is_train, download=False)
        assert torch.equal(ours.images.permute(0, 2, 3, 1), torch.from_numpy(ref.data))
        assert ours.labels.tolist() == ref.targets


def test_cifar100_reads_fine_labels_like_torchvision(tmp_path: Path, skip_md5: None) -> None:
    written = write_cifar100(tmp_path)
    for split in ("train", "test"):
        ours = load_dataset("cifar100", root=tmp_path, split=split)
        ref = torchvision.datasets.CIFAR100(str(tmp_path), train=split == "train", download=False)
        assert torch.equal(ours.images.permute(0, 2, 3, 1), torch.from_numpy(ref.data))
        assert ours.labels.tolist() == ref.targets == written[split + "_labels"].tolist()
        assert ours.num_classes == 100


def test_cifar_resized_to_the_run_size(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    small = load_dataset("cifar10", root=tmp_path, split="test", image_size=16)
    full = load_dataset("cifar10", root=tmp_path, split="test")
    ref = TF.resize(full.images.float(), [16, 16], antialias=True).round()
    assert small.images.shape == (3, 3, 16, 16)
    assert (small.images.float() - ref).abs().max() <= 1


@pytest.mark.parametrize("split", ["train", "test", "unlabeled", "train+unlabeled"])
def test_stl10_column_major_binaries_match_torchvision(
    tmp_path: Path, skip_md5: None, split: str
) -> None:
    written = write_stl10(tmp_path)
    ours = load_dataset("stl10", root=tmp_path, split=split)
    parts = {"train+unlabeled": ["train", "unlabeled"]}.get(split, [split])
    expected = np.concatenate([written[p] for p in parts])
    assert torch.equal(ours.images, torch.from_numpy(expected))
    ref = torchvision.datasets.STL10(str(tmp_path), split=split, download=False)
    assert torch.equal(ours.images, torch.from_numpy(ref.data))
    assert ours.labels.tolist() == ref.labels.tolist()


def test_stl10_label_count_mismatch_is_reported(tmp_path: Path) -> None:
    write_stl10(tmp_path, {"train": 3})
    np.ones(2, dtype=np.uint8).tofile(tmp_path / "stl10_binary" / "train_y.bin")
    with pytest.raises(ScalingError, match="3 images but 2 labels"):
        load_dataset("stl10", root=tmp_path, split="train")


def _torchvision_folder(root: Path, size: int) -> tuple[torch.Tensor, list[int]]:
    """torchvision.datasets.ImageFolder + Resize(shorter side) + CenterCrop: the reference."""
    transform = v2.Compose([v2.Resize(size), v2.CenterCrop(size), v2.PILToTensor()])
    ref = torchvision.datasets.ImageFolder(str(root), transform=transform)
    return torch.stack([ref[i][0] for i in range(len(ref))]), ref.targets


def test_imagefolder_matches_torchvision_imagefolder(tmp_path: Path) -> None:
    write_imagefolder(tmp_path)
    train = load_dataset("imagefolder", root=tmp_path, image_size=20)
    images, targets = _torchvision_folder(tmp_path / "train", 20)
    assert (
        train.num_classes == 3
        and torch.equal(train.images, images)
        and train.labels.tolist() == targets
    )
    val = load_dataset("imagefolder", root=tmp_path, image_size=20, split="test")
    assert val.labels.tolist() == [0, 0, 0, 2, 2, 2]  # class indices come from train/: eel is 2


def test_imagefolder_streams_when_over_the_cache_limit(tmp_path: Path) -> None:
    write_imagefolder(tmp_path)
    cached = load_dataset("imagefolder", root=tmp_path, image_size=16)
    streamed = load_dataset("imagefolder", root=tmp_path, image_size=16, max_cache_bytes=1000)
    assert isinstance(streamed, StreamingImageSet) and len(streamed) == len(cached)
    idx = torch.tensor([8, 0, 4])
    for a, b in zip(streamed.batch(idx), cached.batch(idx), strict=True):
        assert torch.equal(a, b)
    from_stream = list(batches(streamed, 4, seed=1, epoch=2, drop_last=False))
    from_cache = list(batches(cached, 4, seed=1, epoch=2, drop_last=False))
    assert len(from_stream) == len(from_cache) == 3
    for (a, la), (b, lb) in zip(from_stream, from_cache, strict=True):
        assert torch.equal(a, b) and torch.equal(la, lb)


@pytest.mark.parametrize(
    "name, hint",
    [
        ("cifar10", "cifar-10-python.tar.gz"),
        ("cifar100", "cifar-100-python.tar.gz"),
        ("stl10", "stl10_binary.tar.gz"),
        ("imagefolder", "one sub-folder per class"),
    ],
)
def test_missing_files_say_where_to_put_them(tmp_path: Path, name: str, hint: str) -> None:
    with pytest.raises(ScalingError, match=hint) as err:
        load_dataset(name, root=tmp_path, split="test")
    assert str(tmp_path) in str(err.value)
    with pytest.raises(SpecError, match="root"):
        load_dataset(name, split="test")


# -- bundled and generated data ------------------------------------------------------------


def test_digits_fixed_stratified_split_of_the_real_images() -> None:
    from sklearn.datasets import load_digits

    train = load_dataset("digits", split="train", image_size=8, seed=1)
    test = load_dataset("digits", split="test", image_size=8, seed=2)
    assert (len(train), len(test)) == (1437, 360)
    assert torch.equal(
        train.images, load_dataset("digits", split="train", image_size=8, seed=3).images
    )
    assert (
        torch.bincount(test.labels, minlength=10) - torch.bincount(train.labels) / 4
    ).abs().max() <= 1
    digits = load_digits()
    expected = np.round(digits.images * 255 / 16).astype(np.uint8).reshape(len(digits.target), -1)
    ours = torch.cat([train.images, test.images])
    assert torch.equal(ours[:, 0], ours[:, 2])  # grey replicated to RGB
    got = ours[:, 0].flatten(1).numpy()
    assert sorted(map(bytes, got)) == sorted(map(bytes, expected))  # same images, each once
    assert load_dataset("digits", image_size=32).images.shape[1:] == (3, 32, 32)


def test_synthetic_is_deterministic_balanced_and_learnable_from_shape_only() -> None:
    from sklearn.linear_model import LogisticRegression

    train = load_dataset("synthetic", split="train", num_images=600, seed=5)
    again = load_dataset("synthetic", split="train", num_images=600, seed=5)
    other = load_dataset("synthetic", split="train", num_images=600, seed=6)
    test = load_dataset("synthetic", split="test", num_images=300, seed=5)
    assert torch.equal(train.images, again.images) and not torch.equal(train.images, other.images)
    assert not torch.equal(train.images[:300], test.images)
    assert torch.bincount(train.labels).tolist() == [60] * 10

    def shape_features(x: torch.Tensor) -> np.ndarray:  # translation-invariant foreground spectrum
        x = x.float() / 255
        foreground = (x - x[:, :, :1, :1]).abs().sum(1)
        return torch.fft.rfft2(foreground).abs().log1p().flatten(1).numpy()

    def colour_features(x: torch.Tensor) -> np.ndarray:
        return (x.float() / 255).mean(dim=(2, 3)).numpy()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for features, lo, hi in ((shape_features, 0.8, 1.0), (colour_features, 0.0, 0.3)):
            clf = LogisticRegression(max_iter=500).fit(features(train.images), train.labels.numpy())
            assert lo <= clf.score(features(test.images), test.labels.numpy()) <= hi


# -- batch order ---------------------------------------------------------------------------


def small_set(n: int = 23) -> ImageSet:
    images = torch.arange(n, dtype=torch.uint8)[:, None, None, None].expand(n, 3, 2, 2).contiguous()
    return ImageSet(images, torch.arange(n), n)


def test_batches_are_a_function_of_seed_and_epoch() -> None:
    ds = small_set()
    first = [labels.tolist() for _, labels in batches(ds, 5, seed=0, epoch=0)]
    assert first == [labels.tolist() for _, labels in batches(ds, 5, seed=0, epoch=0)]
    assert first != [labels.tolist() for _, labels in batches(ds, 5, seed=0, epoch=1)]
    assert first != [labels.tolist() for _, labels in batches(ds, 5, seed=1, epoch=0)]
    assert len(first) == 4 and all(len(b) == 5 for b in first)  # drop_last: 23 // 5
    everything = [labels for _, labels in batches(ds, 5, seed=0, epoch=0, drop_last=False)]
    assert [len(b) for b in everything] == [5, 5, 5, 5, 3]
    assert sorted(torch.cat(everything).tolist()) == list(range(23))
    for images, labels in batches(ds, 5, seed=0, epoch=0):
        assert torch.equal(images[:, 0, 0, 0].long(), labels)  # images travel with their labels


class CountingSet(ImageSet):
    calls = 0

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        CountingSet.calls += 1
        return super().batch(indices)


def test_resuming_at_a_step_sees_the_same_batches_and_skips_without_loading() -> None:
    base = small_set(40)
    ds = CountingSet(base.images, base.labels, base.num_classes)
    full = [labels.tolist() for _, labels in batches(ds, 4, seed=3, epoch=7)]
    CountingSet.calls = 0
    resumed = [labels.tolist() for _, labels in batches(ds, 4, seed=3, epoch=7, start_step=6)]
    assert resumed == full[6:] and CountingSet.calls == 4


def test_batches_land_on_the_requested_device() -> None:
    images, labels = next(batches(small_set(), 4, seed=0, epoch=0, device="meta"))
    assert images.device.type == "meta" and labels.device.type == "meta"
    assert images.dtype == torch.uint8 and labels.dtype == torch.int64


def test_imageset_validates_its_tensors() -> None:
    with pytest.raises(ValueError, match="uint8"):
        ImageSet(torch.zeros(2, 3, 4, 4), torch.zeros(2, dtype=torch.int64), 2)
    with pytest.raises(ValueError, match="labels"):
        ImageSet(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64), 2)

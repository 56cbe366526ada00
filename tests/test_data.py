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
from scaling.sweep.methods import AugmentStyle
from scaling.train import readers
from scaling.train.augment import CropFlipAugment, SimCLRAugment, crop_boxes
from scaling.train.data import ImageSet, batches
from scaling.train.imagefolder import ImageFolderSet
from scaling.train.readers import DATASETS, DatasetInfo, load_dataset
from scaling.train.views import train_views

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
    """root/train/<class>/*.png and root/val/<class>/*.png, non-square images."""
    for split in ("train", "val"):
        for c in ("cat", "dog", "eel"):
            (root / split / c).mkdir(parents=True)
            for k, (w, h) in enumerate(sizes):
                pixels = RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{k}.png")
            (root / split / c / "notes.txt").write_text("not an image")


def write_photos(root: Path, per_class: int = 4, classes: int = 3, seed: int = 0) -> list[Path]:
    """JPEG folders with photographs' sizes and aspects: 300-500 px, 4:3 and 3:4."""
    rng = np.random.default_rng(seed)
    written = []
    for split in ("train", "val"):
        for c in range(classes):
            (root / split / f"class{c}").mkdir(parents=True)
            for k in range(per_class):
                long = int(rng.integers(300, 501))
                w, h = (long, long * 3 // 4) if k % 2 == 0 else (long * 3 // 4, long)
                smooth = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
                im = Image.fromarray(smooth).resize((w, h), Image.Resampling.BICUBIC)
                path = root / split / f"class{c}" / f"{k}.jpg"
                im.save(path, quality=90)
                written.append(path)
    return written


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
def test_every_registered_dataset_loads(name: str, tmp_path: Path, skip_md5: None) -> None:
    if name not in FIXTURES:
        pytest.fail(f"add a fixture writer for dataset {name!r} to FIXTURES")
    FIXTURES[name](tmp_path)
    info = DATASETS[name]
    for split in ("train", "test"):
        ds = load_dataset(name, root=tmp_path, image_size=24, split=split, num_images=40)
        assert len(ds) > 0 and ds.labels.dtype == torch.int64 and ds.labels.shape == (len(ds),)
        assert info.num_classes is None or ds.num_classes == info.num_classes
        assert ((ds.labels >= 0) & (ds.labels < ds.num_classes)).all()
        images, labels = ds.batch(torch.tensor([len(ds) - 1, 0]))
        assert images.dtype == torch.uint8 and images.shape == (2, 3, 24, 24)
        assert labels.tolist() == [ds.labels[-1], ds.labels[0]]
        if isinstance(ds, ImageSet):
            assert torch.equal(images[1], ds.images[0])


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


def test_cifar_resized_to_the_run_size(tmp_path: Path, skip_md5: None) -> None:
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


def test_stl10_label_count_mismatch_is_reported(tmp_path: Path, skip_md5: None) -> None:
    write_stl10(tmp_path, {"train": 3, "test": 2, "unlabeled": 1})
    np.ones(2, dtype=np.uint8).tofile(tmp_path / "stl10_binary" / "train_y.bin")
    with pytest.raises(ScalingError, match="3 images but 2 labels"):
        load_dataset("stl10", root=tmp_path, split="train")


@pytest.mark.parametrize(
    "name, write",
    [("cifar10", write_cifar10), ("cifar100", write_cifar100), ("stl10", write_stl10)],
)
def test_files_that_fail_the_integrity_check_are_one_line(
    tmp_path: Path, name: str, write: Callable[[Path], object]
) -> None:
    """The fixtures are not the published archives: torchvision's md5 check refuses them."""
    write(tmp_path)
    with pytest.raises(ScalingError, match="failed torchvision's integrity check") as err:
        load_dataset(name, root=tmp_path, split="test")
    assert "\n" not in str(err.value) and str(tmp_path) in str(err.value)


def _torchvision_folder(root: Path, size: int) -> tuple[torch.Tensor, list[int]]:
    """torchvision.datasets.ImageFolder + Resize(size / 0.875) + CenterCrop(size): the reference."""
    transform = v2.Compose([v2.Resize(round(size / 0.875)), v2.CenterCrop(size), v2.PILToTensor()])
    ref = torchvision.datasets.ImageFolder(str(root), transform=transform)
    return torch.stack([ref[i][0] for i in range(len(ref))]), ref.targets


def _everything(ds: ImageFolderSet) -> torch.Tensor:
    return ds.batch(torch.arange(len(ds)))[0]


def test_imagefolder_evaluation_input_is_torchvisions_resize_and_centre_crop(
    tmp_path: Path,
) -> None:
    write_imagefolder(tmp_path)
    train = load_dataset("imagefolder", root=tmp_path, image_size=20)
    images, targets = _torchvision_folder(tmp_path / "train", 20)
    assert train.num_classes == 3 and train.labels.tolist() == targets
    assert torch.equal(_everything(train), images)
    val = load_dataset("imagefolder", root=tmp_path, image_size=20, split="test")
    assert val.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # class indices come from train/


def test_photo_evaluation_input_equals_resize_256_centre_crop_224(tmp_path: Path) -> None:
    write_photos(tmp_path, per_class=2, classes=2)
    for cache in (0, 1 << 30):  # from the files, and from the in-memory copy
        ours = _everything(load_dataset("imagefolder", root=tmp_path, max_cache_bytes=cache))
        images, _ = _torchvision_folder(tmp_path / "train", 224)
        assert ours.shape == (4, 3, 224, 224)
        assert (ours.float() - images.float()).abs().max() <= 1  # resampling tolerance


def test_imagefolder_cached_equals_streamed(tmp_path: Path) -> None:
    write_imagefolder(tmp_path)
    kw = {"root": tmp_path, "image_size": 20}
    cached = load_dataset("imagefolder", **kw)
    streamed = load_dataset("imagefolder", max_cache_bytes=0, **kw)
    assert cached._cache is not None and streamed._cache is None and len(streamed) == 9
    idx = torch.tensor([8, 0, 4])
    for a, b in zip(streamed.batch(idx), cached.batch(idx), strict=True):
        assert torch.equal(a, b)
    from_stream = list(batches(streamed, 4, seed=1, epoch=2, drop_last=False))
    from_cache = list(batches(cached, 4, seed=1, epoch=2, drop_last=False))
    assert len(from_stream) == len(from_cache) == 3
    for (a, la), (b, lb) in zip(from_stream, from_cache, strict=True):
        assert torch.equal(a, b) and torch.equal(la, lb)


@pytest.mark.parametrize("style", list(AugmentStyle))
def test_photo_crops_are_the_same_cached_or_not(tmp_path: Path, style: AugmentStyle) -> None:
    """Photographs larger than any evaluation side: every training crop and evaluation
    image is the same whether the folder is kept in memory or read from disk (the cache
    holds the files' bytes), so the cache is rightly no part of a run's identity."""
    paths = write_photos(tmp_path, per_class=3, classes=2)
    total = sum(p.stat().st_size for p in paths if p.parent.parent.name == "train")
    kw = {"root": tmp_path, "image_size": 48, "workers": 2}
    cached = load_dataset("imagefolder", max_cache_bytes=total, **kw)
    streamed = load_dataset("imagefolder", max_cache_bytes=total - 1, **kw)
    assert cached._cache is not None and streamed._cache is None
    aug = SimCLRAugment(48, crop_scale=(0.05, 1.0), style=style)
    gen = torch.Generator().manual_seed(0)
    idx = torch.tensor([5, 0, 3, 3, 1])
    draws = [aug.sample_params(5, None, None, gen).crop_draws for _ in range(2)]
    a, b = cached.crops(idx, draws, aug), streamed.crops(idx, draws, aug)
    assert a.shape == (2, 5, 3, 48, 48) and torch.equal(a, b)
    assert torch.equal(cached.batch(idx)[0], streamed.batch(idx)[0])
    assert cached.decoded == streamed.decoded == 10


# -- training crops from the original image ------------------------------------------------


def _marked_wide_jpeg(root: Path) -> None:
    """One 480x240 grey photograph with a red left border and a blue right border (40 px)."""
    pixels = np.full((240, 480, 3), 128, dtype=np.uint8)
    pixels[:, :40] = (255, 0, 0)
    pixels[:, -40:] = (0, 0, 255)
    for split in ("train", "val"):
        (root / split / "wide").mkdir(parents=True)
        Image.fromarray(pixels).save(root / split / "wide" / "0.jpg", quality=95)


@pytest.mark.parametrize("style", list(AugmentStyle))
def test_training_views_reach_the_borders_of_the_original(
    tmp_path: Path, style: AugmentStyle
) -> None:
    _marked_wide_jpeg(tmp_path)
    aug = CropFlipAugment(32, style=style)
    ds = load_dataset("imagefolder", root=tmp_path, image_size=32, max_cache_bytes=0)
    assert not (_everything(ds)[0, 0] > 200).any()  # the centre crop shows neither border
    gen = torch.Generator().manual_seed(0)
    draws = [aug.sample_params(200, None, None, gen).crop_draws]
    crops = ds.crops(torch.zeros(200, dtype=torch.long), draws, aug)[0]
    if crops.is_floating_point():  # the official style's bicubic crops, in [0, 1] or near
        crops = crops * 255
    crops = crops.int()
    red = ((crops[:, 0] > 200) & (crops[:, 2] < 60)).flatten(1).any(1)
    blue = ((crops[:, 2] > 200) & (crops[:, 0] < 60)).flatten(1).any(1)
    assert red.sum() > 10 and blue.sum() > 10 and ds.decoded == 1 + 200  # 1 in 8 each
    # Through the training stream (flip and normalise on the device) too.
    data = _repeat(ds, 64)
    (step, *_) = train_views(
        data, aug, gen, batch_size=64, seed=0, epoch=0, rows=slice(0, 64), views=2
    )
    v = torch.cat(step.views)
    assert v.shape == (128, 3, 32, 32)
    assert ((v[:, 0] > 0.6) & (v[:, 2] < -0.6)).flatten(1).any(1).sum() > 5  # red, in [-1, 1]
    assert ((v[:, 2] > 0.6) & (v[:, 0] < -0.6)).flatten(1).any(1).sum() > 5  # blue


def _repeat(ds: ImageFolderSet, n: int) -> ImageFolderSet:
    """The same set with its (one) image listed n times."""
    return ImageFolderSet(ds.paths * n, ds.labels.repeat(n), ds.num_classes, ds.image_size, 2)


def test_crop_boxes_on_a_wide_image_follow_torchvision_get_params() -> None:
    n, height, width = 20_000, 240, 480
    aug = SimCLRAugment(224, style=AugmentStyle.TORCHVISION)
    draws = aug.sample_params(n, None, None, torch.Generator().manual_seed(1)).crop_draws
    top, left, h, w = crop_boxes(draws, height, width, aug.crop_ratio).T
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= height).all() and (left + w <= width).all()
    torch.manual_seed(0)
    image = torch.zeros(3, height, width)
    ref = torch.tensor(
        [v2.RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(n)]
    )
    ours = torch.stack([top, left, h, w], dim=1)
    for name, col in (("top", 0), ("left", 1), ("height", 2), ("width", 3)):
        a, b = ours[:, col].float(), ref[:, col].float()
        scale = {"top": height, "left": width, "height": height, "width": width}[name]
        assert abs(a.mean() - b.mean()) < 0.01 * scale, name
        assert abs(a.std() - b.std()) < 0.01 * scale, name
    fallback = (ours[:, 2] == height) & (ours[:, 3] == round(height * 4 / 3))
    ref_fallback = (ref[:, 2] == height) & (ref[:, 3] == round(height * 4 / 3))
    assert abs(fallback.float().mean() - ref_fallback.float().mean()) < 0.01
    # The same draws on per-image sizes give each image's own box.
    per_image = crop_boxes(
        draws[:3], torch.tensor([240, 300, 500]), torch.tensor([480, 400, 375]), aug.crop_ratio
    )
    for i, (hh, ww) in enumerate([(240, 480), (300, 400), (500, 375)]):
        assert torch.equal(per_image[i], crop_boxes(draws[i : i + 1], hh, ww, aug.crop_ratio)[0])


def test_crops_equal_torchvisions_resized_crop_of_the_decoded_file(tmp_path: Path) -> None:
    """Boxes too small for a reduced JPEG decode: exactly torchvision's resized_crop on PIL.
    Large boxes decode at 1/2 or 1/4 scale first: within a few grey levels on average."""
    paths = write_photos(tmp_path, per_class=2, classes=2)
    ds = load_dataset("imagefolder", root=tmp_path, image_size=64, max_cache_bytes=0)
    aug = SimCLRAugment(64, style=AugmentStyle.TORCHVISION)
    draws = aug.sample_params(4, None, None, torch.Generator().manual_seed(2)).crop_draws
    crops = ds.crops(torch.arange(4), [draws], aug)[0]
    for i in range(4):
        with Image.open(paths[i]) as im:
            full = im.convert("RGB")
        top, left, h, w = crop_boxes(draws[i : i + 1], full.height, full.width, aug.crop_ratio)[0]
        ref = TF.pil_to_tensor(TF.resized_crop(full, int(top), int(left), int(h), int(w), [64, 64]))
        diff = (crops[i].float() - ref.float()).abs()
        if min(int(h), int(w)) < 2 * 64:  # no DCT scaling possible
            assert torch.equal(crops[i], ref), i
        else:
            assert diff.mean() < 4, (i, diff.mean())


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


# -- bad image folders: one line naming the path ---------------------------------------------


def _break(root: Path, how: str) -> str:
    """Damage a photo folder one way; a fragment of the message that must name it."""
    if how == "empty class":
        (root / "train" / "class0" / "0.jpg").unlink()
        for p in (root / "train" / "class0").iterdir():
            p.unlink()
        return f"{root / 'train' / 'class0'} has no images"
    if how == "class mismatch":
        (root / "val" / "class1").rename(root / "val" / "class9")
        return f"{root / 'val'} has classes that {root / 'train'} lacks: class9"
    if how == "no class folders":
        for d in (root / "train").iterdir():
            for p in d.iterdir():
                p.unlink()
            d.rmdir()
        return f"{root / 'train'} has no class sub-folders"
    if how == "unreadable image":
        (root / "train" / "class1" / "0.jpg").write_bytes(b"not a jpeg at all")
        return f"cannot read image {root / 'train' / 'class1' / '0.jpg'}"
    raise ValueError(how)


BAD_FOLDERS = ["empty class", "class mismatch", "no class folders", "unreadable image"]


@pytest.mark.parametrize("how", BAD_FOLDERS)
def test_bad_folders_are_one_line_naming_the_path(tmp_path: Path, how: str) -> None:
    write_photos(tmp_path, per_class=2, classes=2)
    fragment = _break(tmp_path, how)
    with pytest.raises(ScalingError) as err:
        load_dataset("imagefolder", root=tmp_path, image_size=32)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_a_file_corrupt_mid_run_fails_with_its_path(tmp_path: Path) -> None:
    """Not caught by the scan (only the first image of a class is opened): the batch that
    decodes it raises a ScalingError naming the file (the run fails; README says why)."""
    write_photos(tmp_path, per_class=2, classes=2)
    bad = tmp_path / "train" / "class1" / "1.jpg"
    bad.write_bytes(bad.read_bytes()[:300])  # truncated: header fine, data gone
    ds = load_dataset("imagefolder", root=tmp_path, image_size=32, max_cache_bytes=0)
    aug = SimCLRAugment(32)
    draws = [aug.sample_params(4, None, None, torch.Generator()).crop_draws]
    with pytest.raises(ScalingError, match=f"cannot decode image {bad}"):
        ds.crops(torch.arange(4), draws, aug)
    with pytest.raises(ScalingError, match=f"cannot decode image {bad}"):
        list(batches(ds, 4, seed=0, epoch=0))


@pytest.mark.parametrize("n", [2, 10, 1437, 5000])
def test_the_validation_share_is_held_out_of_training_for_every_method(n: int) -> None:
    """A fixed tenth of the labelled training images is held out; the rest, unlabelled
    images included (STL-10's train+unlabeled: the labelled rows first, in the order of
    `train`), is kept; the split of `train` and of `train+unlabeled` holds out the same
    images, so SimCLR and the supervised baseline are scored on the same ones."""
    from scaling.plan.data_info import held_out
    from scaling.train.data import validation_rows

    labels = torch.arange(n) % 10
    kept, held = validation_rows(labels, 0.1)
    assert set(kept.tolist()).isdisjoint(held.tolist())
    assert sorted(kept.tolist() + held.tolist()) == list(range(n))
    assert len(held) == held_out(n, 0.1) == min(n - 1, max(1, round(0.1 * n)))
    assert torch.equal(validation_rows(labels, 0.1)[1], held)  # the same images every run
    with_unlabelled = torch.cat([labels, torch.full((3 * n,), -1)])
    kept_u, held_u = validation_rows(with_unlabelled, 0.1)
    assert torch.equal(held_u, held) and len(kept_u) == len(kept) + 3 * n
    assert len(validation_rows(labels, 0.0)[1]) == 0

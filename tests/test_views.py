"""The training stream: two gloo ranks, each decoding only its rows, equal one process."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
import torch

from scaling.train import distributed
from scaling.train.augment import SimCLRAugment
from scaling.train.readers import load_dataset
from scaling.train.views import train_views
from tests.test_data import write_photos
from tests.test_distributed import WORLD, spawn_ranks

BATCH, SIZE = 8, 32
AUG = SimCLRAugment(SIZE, color_strength=1.0, blur=True)


def _epoch(root: Path, rows: slice, start_step: int = 0, shuffle: bool = False) -> tuple[list, int]:
    """Every step's views of `rows` of a one-epoch run (18 images, batch 8: 18 // 8 + 1 = 3
    steps, the last one reaching into the next permutation), and how many images this
    process decoded."""
    data = load_dataset("imagefolder", root=root, image_size=SIZE, max_cache_bytes=0, workers=2)
    gen = torch.Generator().manual_seed(5)
    steps = list(
        train_views(
            data,
            AUG,
            gen,
            batch_size=BATCH,
            seed=1,
            epoch=0,
            rows=rows,
            views=2,
            start_step=start_step,
            shuffle=shuffle,
        )
    )
    return steps, data.decoded


def _worker(rank: int, port: int, root: str, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    distributed.init_distributed("cpu", timedelta(minutes=2))
    per = BATCH // WORLD
    steps, decoded = _epoch(Path(root), slice(rank * per, (rank + 1) * per))
    gathered = [[distributed.all_gather_rows(v, BATCH) for v in s.views] for s in steps]
    shuffled, _ = _epoch(Path(root), slice(rank * per, (rank + 1) * per), shuffle=True)
    res = {
        "shuffled": [s.views for s in shuffled],
        "perms": [s.shuffle for s in shuffled],
        "views": [s.views for s in steps],
        "labels": [s.labels for s in steps],
        "gathered": gathered,
        "decoded": decoded,
        "states": [s.rng_state for s in steps],
    }
    torch.save(res, Path(out) / f"rank{rank}.pt")
    distributed.cleanup()


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    write_photos(root, per_class=6, classes=3)  # 18 training images: 3 steps of 8
    return root


@pytest.fixture(scope="module")
def ranks(photos: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    return spawn_ranks(_worker, tmp_path_factory.mktemp("views"), str(photos))


def test_two_ranks_see_the_views_of_one_process(photos: Path, ranks: list[dict]) -> None:
    steps, _ = _epoch(photos, slice(0, BATCH))
    assert len(steps) == 3 and all(len(r["views"]) == 3 for r in ranks)
    per = BATCH // WORLD
    for k, step in enumerate(steps):
        for v in range(2):
            whole = step.views[v]
            assert whole.shape == (BATCH, 3, SIZE, SIZE)
            for r, res in enumerate(ranks):
                mine = whole[r * per : (r + 1) * per]
                torch.testing.assert_close(res["views"][k][v], mine, atol=1e-6, rtol=0)
                torch.testing.assert_close(res["gathered"][k][v], whole, atol=1e-6, rtol=0)
        labels = torch.cat([res["labels"][k] for res in ranks])
        assert torch.equal(labels, step.labels)
        assert all(torch.equal(res["states"][k], step.rng_state) for res in ranks)
    assert not torch.allclose(steps[0].views[0], steps[0].views[1])  # two different views


def test_each_rank_decodes_only_its_share(photos: Path, ranks: list[dict]) -> None:
    _, decoded = _epoch(photos, slice(0, BATCH))
    assert decoded == 3 * BATCH  # one decode per image for both views
    assert [res["decoded"] for res in ranks] == [12, 12]  # 3 steps x 4 rows each


def test_the_second_view_of_a_shuffled_batch(photos: Path, ranks: list[dict]) -> None:
    """Shuffle-BN: one permutation per step, drawn after the views' parameters (identical
    on every rank); the second view of rank r holds the rows perm[rows of r] of the
    global batch, so two ranks again see exactly what one process sees."""
    aligned, _ = _epoch(photos, slice(0, BATCH))
    shuffled, decoded = _epoch(photos, slice(0, BATCH), shuffle=True)
    assert decoded == 3 * 2 * BATCH  # each view's crop from its own image: a decode each
    per = BATCH // WORLD
    # The first step draws the same parameters (the permutation comes after them); each
    # view's crop is then decoded on its own (JPEG draft scales may differ by a pixel step).
    a, s = aligned[0], shuffled[0]
    assert sorted(s.shuffle.tolist()) == list(range(BATCH)) and a.shuffle is None
    for got, want in ((s.views[0], a.views[0]), (s.views[1], a.views[1][s.shuffle])):
        assert (got - want).abs().mean() < 0.02 and (got - want).abs().max() < 0.3
    for k, s in enumerate(shuffled):
        for r, res in enumerate(ranks):
            assert torch.equal(res["perms"][k], s.shuffle)
            mine = s.views[1][r * per : (r + 1) * per]
            torch.testing.assert_close(res["shuffled"][k][1], mine, atol=1e-6, rtol=0)
    assert any(not torch.equal(s.shuffle, torch.arange(BATCH)) for s in shuffled)


def test_a_resumed_epoch_draws_what_the_full_one_drew(photos: Path) -> None:
    """Restarting at step 1 from step 0's saved generator state gives step 1's views: the
    stream's look-ahead does not leak into the state a checkpoint saves."""
    full, _ = _epoch(photos, slice(0, BATCH))
    data = load_dataset("imagefolder", root=photos, image_size=SIZE, max_cache_bytes=0)
    gen = torch.Generator()
    gen.set_state(full[0].rng_state)
    (again, *_) = train_views(
        data,
        AUG,
        gen,
        batch_size=BATCH,
        seed=1,
        epoch=0,
        rows=slice(0, BATCH),
        views=2,
        start_step=1,
    )
    for a, b in zip(again.views, full[1].views, strict=True):
        assert torch.equal(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_folder_views_on_cuda_match_the_cpu(photos: Path) -> None:
    """The crop draws come from a CUDA generator and go to the decode threads; the
    batched flip, colour and blur run on the GPU: the same views as on the CPU."""
    data = load_dataset("imagefolder", root=photos, image_size=SIZE, max_cache_bytes=0)
    gen = torch.Generator(device="cuda").manual_seed(5)
    (cuda, *_) = train_views(
        data,
        AUG,
        gen,
        batch_size=BATCH,
        seed=1,
        epoch=0,
        rows=slice(0, BATCH),
        views=2,
        device="cuda",
    )
    cpu_gen = torch.Generator(device="cuda").manual_seed(5)
    (ref, *_) = train_views(
        data,
        AUG,
        cpu_gen,
        batch_size=BATCH,
        seed=1,
        epoch=0,
        rows=slice(0, BATCH),
        views=2,
        device="cpu",
    )
    for a, b in zip(cuda.views, ref.views, strict=True):
        assert a.device.type == "cuda"
        torch.testing.assert_close(a.cpu(), b, atol=2e-4, rtol=0)

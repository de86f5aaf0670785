"""Sources, image normalisation, the Fashion-MNIST pool, transforms and PoolDataset."""

from __future__ import annotations

import gzip
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bilaf.features import (
    PoolDataset,
    build_transform,
    image_id,
    ingest_folder,
    normalize_image,
    open_source,
    read_manifest,
    sync_pool,
)
from bilaf.features.sources import FASHION_MNIST_CLASSES, ArraySource

SMALL_TRAIN, SMALL_TEST = 48, 16  # the sizes of conftest's small_pool


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


# ------------------------------------------------------------------------------ Fashion-MNIST


def test_fashion_mnist_pool_is_stratified_with_content_ids(small_pool):
    frame = read_manifest(small_pool)
    assert list(frame.columns) == ["id", "path", "label", "class_name", "split", "origin"]
    assert (frame["split"] == "train").sum() == SMALL_TRAIN and (frame["split"] == "test").sum() == SMALL_TEST
    # 10 equal classes: 48 -> eight classes of 5 and two of 4; 16 -> six of 2, four of 1.
    assert sorted(frame[frame.split == "train"].label.value_counts().tolist()) == [4, 4] + [5] * 8
    assert sorted(frame[frame.split == "test"].label.value_counts().tolist()) == [1] * 4 + [2] * 6
    assert frame["id"].is_unique and frame["id"].tolist() == sorted(frame["id"])
    for row in frame.itertuples():
        assert row.path == f"images/{row.split}/{row.id}.png"  # not files: copied as PNG
        assert row.class_name == FASHION_MNIST_CLASSES[row.label]
        assert row.origin.startswith(f"fashion-mnist:{row.split}/")
        with Image.open(small_pool / row.path) as image:
            assert image.mode == "L" and image.size == (28, 28)
            assert image_id(image.copy()) == row.id


def test_pool_is_byte_identical_when_regenerated(small_pool, tmp_path):
    again = tmp_path / "data"
    sync_pool(again, "fashion-mnist", train_size=SMALL_TRAIN, test_size=SMALL_TEST, seed=0)
    assert _files(again) == _files(small_pool)


def test_second_sync_rewrites_nothing_and_the_seed_changes_the_draw(small_pool, tmp_path):
    out = tmp_path / "data"
    shutil.copytree(small_pool, out)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    report = sync_pool(out, "fashion-mnist", train_size=SMALL_TRAIN, test_size=SMALL_TEST, seed=0)
    assert report.files_written == 0 and report.num_added == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == stamps
    other = sync_pool(tmp_path / "other", "fashion-mnist", train_size=SMALL_TRAIN, test_size=SMALL_TEST, seed=1)
    assert other.items == report.items
    assert set(read_manifest(tmp_path / "other")["id"]) != set(read_manifest(out)["id"])


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as stream:
        stream.write(header + array.astype(np.uint8).tobytes())


def _fake_fashion_mnist(root: Path, train: int, test: int) -> None:
    rng = np.random.default_rng(0)
    for prefix, count in (("train", train), ("t10k", test)):
        _write_idx(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (count, 28, 28)))
        _write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", np.arange(count) % 10)


def test_idx_files_are_read_with_numpy(tmp_path):
    _fake_fashion_mnist(tmp_path, train=20, test=10)
    source = open_source("fashion-mnist", tmp_path)
    assert len(source.records) == 30
    assert source.records[0].name == "train/00" and source.records[20].name == "test/0"
    assert [r.label for r in source.records[:12]] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert all(r.file is None for r in source.records)  # an array source: its images get copied
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz") as stream:
        first = np.frombuffer(stream.read(), np.uint8, offset=16)[:784].reshape(28, 28)
    assert np.array_equal(np.asarray(source.load(0)), first)


def test_array_source_ids_match_the_decoded_images():
    rng = np.random.default_rng(0)
    gray = ArraySource("gray", ["a"], {"train": (rng.integers(0, 256, (3, 5, 7), dtype=np.uint8), [0, 0, 0])})
    rgb = ArraySource("rgb", ["a"], {"train": (rng.integers(0, 256, (3, 4, 6, 3), dtype=np.uint8), [0, 0, 0])})
    for source in (gray, rgb):
        assert [source.image_id(i) for i in range(3)] == [image_id(source.load(i)) for i in range(3)]
    with pytest.raises(ValueError, match="expected uint8 images.*float32"):
        ArraySource("bad", ["a"], {"train": (np.zeros((2, 3, 3), np.float32), [0, 0])})


def test_corrupt_idx_file_is_named(tmp_path):
    _fake_fashion_mnist(tmp_path, train=20, test=10)
    bad = tmp_path / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz"):
        open_source("fashion-mnist", tmp_path)
    _write_idx(bad, np.zeros((3, 2)))  # wrong number of dimensions
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz.*1 dimension"):
        open_source("fashion-mnist", tmp_path)


def test_missing_fashion_mnist_files_fail_clearly(tmp_path, monkeypatch):
    # No network (forced, so this runs online too): the source fails instead of downloading.
    monkeypatch.setattr("bilaf.features.sources.host_reachable", lambda *args, **kwargs: False)
    with pytest.raises(ValueError, match="Fashion-MNIST files not found.*dataset-fashion-mnist"):
        open_source("fashion-mnist", tmp_path)


def test_missing_cifar_files_fail_clearly(tmp_path, monkeypatch):
    monkeypatch.setattr("bilaf.features.sources.host_reachable", lambda *args, **kwargs: False)
    with pytest.raises(ValueError, match=f"cifar10 files not found.*{tmp_path}"):
        sync_pool(tmp_path / "data", "cifar10", root=tmp_path, train_size=10, test_size=10)


def test_unknown_source_and_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown source 'mnist'"):
        sync_pool(tmp_path, "mnist", train_size=1, test_size=1)
    with pytest.raises(ValueError, match="on_unreadable"):
        sync_pool(tmp_path, "fashion-mnist", train_size=1, test_size=1, on_unreadable="ignore")
    with pytest.raises(ValueError, match="data.train_size must be a non-negative integer"):
        sync_pool(tmp_path, "fashion-mnist", train_size=-5, test_size=1)
    with pytest.raises(ValueError, match="data.seed"):
        sync_pool(tmp_path, "fashion-mnist", train_size=1, test_size=1, seed=-1)
    with pytest.raises(ValueError, match="needs root"):
        sync_pool(tmp_path, "image-folder", train_size=1, test_size=1)


# ------------------------------------------------------------------------------ normalisation


def test_awkward_image_files_are_normalised(tmp_path):
    """Modes, bit depths and transparency end up as 8-bit L or RGB, read from the user's files."""
    folder = tmp_path / "incoming" / "thing"
    folder.mkdir(parents=True)
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[:2, :, 3] = 255  # top half opaque red-ish, bottom half fully transparent
    (folder / "alpha.png").write_bytes(_png(rgba, "RGBA"))
    (folder / "deep.png").write_bytes(_png(np.array([[0, 32768, 65535]] * 3, dtype=np.uint16)))
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).convert("P").save(folder / "palette.gif")
    Image.fromarray(rng.integers(0, 256, (9, 9), dtype=np.uint8)).save(folder / "gray.jpg", quality=90)
    ingest_folder(tmp_path / "data", tmp_path / "incoming")
    dataset = PoolDataset(tmp_path / "data", verify_ids=True)
    images = {Path(dataset.frame.at[i, "path"]).name: dataset.image(i) for i in range(len(dataset))}
    assert {name: (image.mode, image.size) for name, image in images.items()} == {
        "alpha.png": ("RGB", (4, 4)),
        "deep.png": ("L", (3, 3)),
        "palette.gif": ("RGB", (8, 8)),
        "gray.jpg": ("L", (9, 9)),
    }
    alpha = np.asarray(images["alpha.png"])
    assert (alpha[2:] == 255).all() and (alpha[:2, :, 0] == 200).all()  # transparent -> white
    assert np.asarray(images["deep.png"])[0].tolist() == [0, 128, 255]  # 16 bit scaled to 8 bit


def test_normalize_rejects_float_images():
    with pytest.raises(ValueError, match="mode 'F'"):
        normalize_image(Image.fromarray(np.zeros((2, 2), dtype=np.float32)))


# ------------------------------------------------------------------------------ reading the pool


def test_transform_makes_normalised_rgb_tensors():
    transform = build_transform(16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    gray = Image.fromarray(np.full((28, 28), 255, dtype=np.uint8))
    tensor = transform(gray)
    assert tensor.shape == (3, 16, 16) and tensor.dtype == torch.float32
    assert torch.allclose(tensor, torch.ones_like(tensor))  # white -> (1 - 0.5) / 0.5
    rgb = Image.fromarray(np.zeros((10, 30, 3), dtype=np.uint8))
    assert transform(rgb).shape == (3, 16, 16)  # aspect ratio not kept
    with pytest.raises(ValueError, match="image_size"):
        build_transform(0, (0.5,) * 3, (0.5,) * 3)


def test_pool_dataset_returns_labels_and_detects_changed_files(small_pool, tmp_path):
    pool = tmp_path / "pool"
    shutil.copytree(small_pool, pool)
    dataset = PoolDataset(pool, split="test", transform=build_transform(32, (0.5,) * 3, (0.5,) * 3), verify_ids=True)
    image, label = dataset[0]
    assert len(dataset) == SMALL_TEST and image.shape == (3, 32, 32)
    assert label == read_manifest(pool).query("split == 'test'")["label"].iloc[0]
    target = pool / dataset.frame.at[0, "path"]
    target.write_bytes(_png(np.zeros((28, 28), dtype=np.uint8)))
    with pytest.raises(ValueError, match=f"{target.name} does not match its id"):
        dataset[0]
    target.write_bytes(b"")
    with pytest.raises(ValueError, match=f"{target.name}: empty file"):
        dataset[0]


def test_read_manifest_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        read_manifest(tmp_path / "missing")
    with pytest.raises(ValueError, match="no manifest.csv"):
        read_manifest(tmp_path)

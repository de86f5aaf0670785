"""Pool preparation: sources, determinism, idempotence, bad input, transforms."""
from __future__ import annotations

import gzip
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dagster_project.features import (
    PoolDataset,
    build_transform,
    image_id,
    open_source,
    prepare_pool,
    read_manifest,
)
from dagster_project.features._network import host_reachable
from dagster_project.features.datasets import FASHION_MNIST_CLASSES, normalize_image

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
    assert list(frame.columns) == ["id", "path", "label", "class_name", "split"]
    assert (frame["split"] == "train").sum() == SMALL_TRAIN and (frame["split"] == "test").sum() == SMALL_TEST
    # 10 classes: 48 -> eight classes of 5 and two of 4 (largest remainder); 16 -> six of 2, four of 1.
    assert sorted(frame[frame.split == "train"].label.value_counts().tolist()) == [4, 4] + [5] * 8
    assert sorted(frame[frame.split == "test"].label.value_counts().tolist()) == [1] * 4 + [2] * 6
    assert frame["id"].is_unique
    for row in frame.itertuples():
        assert row.path == f"images/{row.split}/{row.id}.png"
        assert row.class_name == FASHION_MNIST_CLASSES[row.label]
        with Image.open(small_pool / row.path) as image:
            assert image.mode == "L" and image.size == (28, 28)
            assert image_id(image.copy()) == row.id


def test_pool_is_byte_identical_when_regenerated(small_pool, tmp_path):
    again = tmp_path / "data"
    prepare_pool("fashion-mnist", again, train_size=SMALL_TRAIN, test_size=SMALL_TEST, seed=0)
    assert _files(again) == _files(small_pool)


def test_second_prepare_rewrites_nothing(tmp_path):
    out = tmp_path / "data"
    first = prepare_pool("fashion-mnist", out, train_size=20, test_size=10, seed=3)
    assert first.files_written == 30 + 2  # images + manifest + report
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    second = prepare_pool("fashion-mnist", out, train_size=20, test_size=10, seed=3)
    assert (second.files_written, second.files_removed) == (0, 0)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == stamps


def test_changed_draw_removes_stale_images(tmp_path):
    out = tmp_path / "data"
    prepare_pool("fashion-mnist", out, train_size=20, test_size=10, seed=0)
    report = prepare_pool("fashion-mnist", out, train_size=10, test_size=0, seed=1)
    frame = read_manifest(out)
    assert report.files_removed > 0 and len(frame) == 10
    on_disk = sorted(p.relative_to(out).as_posix() for p in (out / "images").rglob("*.png"))
    assert on_disk == sorted(frame["path"])
    assert not (out / "images" / "test").exists()


def test_seed_changes_the_draw(tmp_path):
    a = prepare_pool("fashion-mnist", tmp_path / "a", train_size=30, test_size=0, seed=0)
    b = prepare_pool("fashion-mnist", tmp_path / "b", train_size=30, test_size=0, seed=1)
    assert a.selected == b.selected
    assert set(read_manifest(tmp_path / "a")["id"]) != set(read_manifest(tmp_path / "b")["id"])


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
    assert source.records[0].origin == "train/00" and source.records[20].origin == "test/0"
    assert [r.label for r in source.records[:12]] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz") as stream:
        first = np.frombuffer(stream.read(), np.uint8, offset=16)[:784].reshape(28, 28)
    assert np.array_equal(np.asarray(source.load(0)), first)


def test_corrupt_idx_file_is_named(tmp_path):
    _fake_fashion_mnist(tmp_path, train=20, test=10)
    bad = tmp_path / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz"):
        open_source("fashion-mnist", tmp_path)
    _write_idx(bad, np.zeros((3, 2)))  # wrong number of dimensions
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz.*1 dimension"):
        open_source("fashion-mnist", tmp_path)


def test_missing_fashion_mnist_files_fail_clearly(tmp_path):
    if host_reachable("fashion-mnist.s3-website.eu-central-1.amazonaws.com", 80):
        pytest.skip("online: the source would download Fashion-MNIST instead of failing")
    with pytest.raises(ValueError, match="Fashion-MNIST files not found.*dataset-fashion-mnist"):
        open_source("fashion-mnist", tmp_path)


def test_missing_cifar_files_fail_clearly(tmp_path):
    if host_reachable("www.cs.toronto.edu"):
        pytest.skip("online: torchvision would download CIFAR-10 instead of failing")
    with pytest.raises(ValueError, match=f"cifar10 files not found.*{tmp_path}"):
        prepare_pool("cifar10", tmp_path / "data", root=tmp_path, train_size=10, test_size=10)


def test_unknown_source_and_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown source 'mnist'"):
        prepare_pool("mnist", tmp_path, train_size=1, test_size=1)
    with pytest.raises(ValueError, match="on_unreadable"):
        prepare_pool("fashion-mnist", tmp_path, train_size=1, test_size=1, on_unreadable="ignore")
    with pytest.raises(ValueError, match="train_size"):
        prepare_pool("fashion-mnist", tmp_path, train_size=-5, test_size=1)
    with pytest.raises(ValueError, match="needs root"):
        prepare_pool("image-folder", tmp_path, train_size=1, test_size=1)


# ------------------------------------------------------------------------------ image folders

@pytest.fixture
def messy_folder(tmp_path) -> Path:
    """Class folders with every awkward input: modes, bit depths, corrupt files, duplicates."""
    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    cats, dogs = root / "cat", root / "dog"
    cats.mkdir(parents=True)
    dogs.mkdir()
    rgb = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    (cats / "rgb.png").write_bytes(_png(rgb))
    Image.fromarray(rng.integers(0, 256, (9, 9), dtype=np.uint8)).save(cats / "gray.jpg", quality=90)
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[:2, :, 3] = 255  # top half opaque red-ish, bottom half fully transparent
    (cats / "alpha.png").write_bytes(_png(rgba, "RGBA"))
    (dogs / "deep.png").write_bytes(_png(np.array([[0, 32768, 65535]] * 3, dtype=np.uint16)))
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).convert("P").save(dogs / "palette.gif")
    (dogs / "copy_of_rgb.png").write_bytes((cats / "rgb.png").read_bytes())
    full = _png(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    (dogs / "truncated.png").write_bytes(full[: len(full) // 2])
    (dogs / "empty.jpg").write_bytes(b"")
    (cats / "notes.txt").write_text("not an image\n")
    return root


def test_image_folder_handles_bad_input_and_records_everything(messy_folder, tmp_path):
    out = tmp_path / "data"
    report = prepare_pool("image-folder", out, root=messy_folder, train_size=None, test_size=1, seed=0)
    reasons = {u["origin"]: u["reason"] for u in report.unreadable}
    assert set(reasons) == {"dog/truncated.png", "dog/empty.jpg", "cat/notes.txt"}
    assert "empty file" in reasons["dog/empty.jpg"]
    assert "not an image" in reasons["cat/notes.txt"]
    assert "cannot decode" in reasons["dog/truncated.png"]
    assert [(d["origin"], d["duplicate_of"]) for d in report.duplicates] == [("dog/copy_of_rgb.png", "cat/rgb.png")]
    assert report.scanned == 9 and report.selected == {"train": 4, "test": 1}

    frame = read_manifest(out)
    assert sorted(frame["class_name"]) == ["cat", "cat", "cat", "dog", "dog"]
    assert set(frame["label"]) == {0, 1}
    images = {}
    for row in frame.itertuples():
        with Image.open(out / row.path) as image:
            images[(row.class_name, image.mode, image.size)] = np.asarray(image)
    assert set(images) == {("cat", "RGB", (10, 12)), ("cat", "L", (9, 9)), ("cat", "RGB", (4, 4)),
                           ("dog", "L", (3, 3)), ("dog", "RGB", (8, 8))}
    alpha = images[("cat", "RGB", (4, 4))]
    assert (alpha[2:] == 255).all() and (alpha[:2, :, 0] == 200).all()  # transparent -> white
    assert images[("dog", "L", (3, 3))][0].tolist() == [0, 128, 255]  # 16 bit scaled to 8 bit

    written = (out / "pool_report.json").read_text()
    assert "dog/truncated.png" in written and "dog/copy_of_rgb.png" in written


def test_unreadable_files_can_fail_the_run(messy_folder, tmp_path):
    with pytest.raises(ValueError, match="3 unreadable file.*cat/notes.txt.*dog/empty.jpg.*dog/truncated.png"):
        prepare_pool("image-folder", tmp_path / "data", root=messy_folder, train_size=None,
                     test_size=0, on_unreadable="fail")
    assert not (tmp_path / "data" / "manifest.csv").exists()


def test_flat_folder_is_unlabelled_and_sizes_are_checked(tmp_path):
    root = tmp_path / "flat"
    root.mkdir()
    for index in range(6):
        (root / f"{index}.png").write_bytes(_png(np.full((5, 5), index * 10, dtype=np.uint8)))
    report = prepare_pool("image-folder", tmp_path / "data", root=root, train_size=4, test_size=None)
    frame = read_manifest(tmp_path / "data")
    assert report.selected == {"train": 4, "test": 2}
    assert frame["label"].isna().all() and (frame["class_name"] == "").all()
    with pytest.raises(ValueError, match="train size 7 exceeds the 6 usable items"):
        prepare_pool("image-folder", tmp_path / "other", root=root, train_size=7, test_size=None)


def test_train_test_folders_fix_the_split(tmp_path):
    root = tmp_path / "split"
    for split, count in (("train", 3), ("test", 2)):
        for label in ("a", "b"):
            (root / split / label).mkdir(parents=True)
            for index in range(count):
                value = {"train": 0, "test": 100}[split] + index * 7 + (label == "b") * 50
                (root / split / label / f"{index}.png").write_bytes(_png(np.full((3, 3), value, np.uint8)))
    prepare_pool("image-folder", tmp_path / "data", root=root, train_size=None, test_size=None)
    frame = read_manifest(tmp_path / "data")
    assert frame.groupby(["split", "class_name"]).size().to_dict() == {
        ("test", "a"): 2, ("test", "b"): 2, ("train", "a"): 3, ("train", "b"): 3}


def test_empty_missing_and_unreadable_only_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=f"image folder {tmp_path / 'empty'} contains no files"):
        prepare_pool("image-folder", tmp_path / "d1", root=tmp_path / "empty", train_size=None, test_size=0)
    with pytest.raises(ValueError, match=f"image folder {tmp_path / 'nowhere'} does not exist"):
        prepare_pool("image-folder", tmp_path / "d2", root=tmp_path / "nowhere", train_size=None, test_size=0)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ValueError, match="no readable images.*a.png"):
        prepare_pool("image-folder", tmp_path / "d3", root=junk, train_size=None, test_size=0)


def test_read_manifest_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        read_manifest(tmp_path / "missing")
    with pytest.raises(ValueError, match="no manifest.csv"):
        read_manifest(tmp_path)


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
    dataset = PoolDataset(pool, split="test", transform=build_transform(32, (0.5,) * 3, (0.5,) * 3),
                          verify_ids=True)
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


def test_normalize_rejects_float_images():
    with pytest.raises(ValueError, match="mode 'F'"):
        normalize_image(Image.fromarray(np.zeros((2, 2), dtype=np.float32)))

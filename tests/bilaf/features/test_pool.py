"""The pool only grows: nested draws, referenced files, ingest reports, a content-defined manifest."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bilaf.features import (
    PoolDataset,
    image_id,
    ingest_folder,
    open_source,
    pool_version,
    read_manifest,
    sync_pool,
)
from bilaf.features.pool import MANIFEST_NAME, REPORT_NAME, nested_stratified_order


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def _tile(value: int, size: int = 5) -> bytes:
    """A distinct small grayscale PNG per value (0..255)."""
    return _png(np.full((size, size), value, dtype=np.uint8))


def _stamps(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------ nested order


def test_every_prefix_of_the_nested_order_is_stratified():
    rng = np.random.default_rng(5)
    labels = [None if value == 3 else int(value) for value in rng.choice(4, size=500, p=[0.5, 0.3, 0.15, 0.05])]
    order = nested_stratified_order(labels, seed=0, split_index=0)
    assert sorted(order) == list(range(500))
    totals = Counter(labels)
    counts: Counter = Counter()
    for n, index in enumerate(order, start=1):
        counts[labels[index]] += 1
        assert all(abs(counts[c] - n * totals[c] / 500) <= 1 for c in totals), n
    assert nested_stratified_order(labels, seed=0, split_index=0) == order  # deterministic
    assert nested_stratified_order(labels, seed=0, split_index=1) != order  # a stream per split
    assert nested_stratified_order(labels, seed=1, split_index=0) != order


# ------------------------------------------------------------------------------ growing a pool


def test_growing_keeps_every_item_and_stays_stratified(tmp_path):
    data = tmp_path / "data"
    sync_pool(data, "fashion-mnist", train_size=300, test_size=100, seed=0)
    before = read_manifest(data).set_index("id")
    test_files = {p: p.read_bytes() for p in (data / "images" / "test").iterdir()}
    test_stamps = _stamps(data / "images" / "test")

    report = sync_pool(data, "fashion-mnist", train_size=400, test_size=100, seed=0)
    after = read_manifest(data).set_index("id")
    assert report.added == {"train": 100, "test": 0} and report.items == {"train": 400, "test": 100}
    assert after.loc[before.index].equals(before)  # all 300 + 100 kept, rows unchanged
    assert after[after.split == "test"].equals(before[before.split == "test"])
    assert {p: p.read_bytes() for p in (data / "images" / "test").iterdir()} == test_files
    assert _stamps(data / "images" / "test") == test_stamps  # not even rewritten
    source_counts = Counter(record.label for record in open_source("fashion-mnist").records if record.split == "train")
    train_counts = after[after.split == "train"]["label"].value_counts()
    for label, total in source_counts.items():
        assert abs(train_counts[label] - 400 * total / sum(source_counts.values())) <= 1

    sync_pool(data, "fashion-mnist", train_size=400, test_size=150, seed=0)
    grown = read_manifest(data).set_index("id")
    assert grown.loc[after.index].equals(after)
    # The pool of size n is the first n of the order, whatever sizes were asked for on the way.
    sync_pool(tmp_path / "fresh", "fashion-mnist", train_size=400, test_size=150, seed=0)
    assert (tmp_path / "fresh" / MANIFEST_NAME).read_bytes() == (data / MANIFEST_NAME).read_bytes()


def test_ingested_copies_of_source_images_do_not_count_as_the_sources_items(tmp_path):
    """Arrivals identical to source images not in the pool yet: the next sync still holds its size."""
    data = tmp_path / "data"
    sync_pool(data, "fashion-mnist", train_size=60, test_size=20, seed=0)
    source = open_source("fashion-mnist")
    taken = {origin.removeprefix("fashion-mnist:") for origin in read_manifest(data)["origin"]}
    arrivals = tmp_path / "arrivals"
    arrivals.mkdir()
    fresh = [i for i, record in enumerate(source.records) if record.split == "train" and record.name not in taken]
    for index in fresh[:10]:
        source.load(index).save(arrivals / f"{index}.png")
    ingest_folder(data, arrivals)
    again = sync_pool(data, "fashion-mnist", train_size=60, test_size=20, seed=0)
    assert again.num_added == 0 and again.items == {"train": 70, "test": 20}
    grown = sync_pool(data, "fashion-mnist", train_size=80, test_size=20, seed=0)
    manifest = read_manifest(data)
    from_source = manifest["origin"].str.startswith("fashion-mnist:") & (manifest["split"] == "train")
    assert grown.added["train"] == 20 and from_source.sum() == 80 and grown.items["train"] == 90


def test_shrinking_is_refused_naming_the_key(small_pool, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(small_pool, data)
    stamps = _stamps(data)
    with pytest.raises(
        ValueError,
        match="pools only grow: data.train_size 47 is below the 48 train items "
        f"from fashion-mnist already in {re.escape(str(data))}/",
    ):
        sync_pool(data, "fashion-mnist", train_size=47, test_size=16)
    with pytest.raises(ValueError, match="pools only grow: data.test_size 0 is below the 16 test items"):
        sync_pool(data, "fashion-mnist", train_size=48, test_size=0)
    with pytest.raises(ValueError, match="data.train_size 60,001 exceeds the 60,000 usable train items"):
        sync_pool(data, "fashion-mnist", train_size=60_001, test_size=16)
    assert _stamps(data) == stamps


def test_split_less_folder_grows_its_test_draw_from_new_files(tmp_path):
    folder = tmp_path / "photos"
    for index in range(20):
        (folder / ("a" if index < 12 else "b")).mkdir(parents=True, exist_ok=True)
        (folder / ("a" if index < 12 else "b") / f"{index:02d}.png").write_bytes(_tile(index))
    data = tmp_path / "data"
    sync_pool(data, "image-folder", root=folder, train_size=None, test_size=5)
    before = read_manifest(data).set_index("id")
    assert Counter(before[before.split == "test"]["class_name"]) == {"a": 3, "b": 2}
    for index in range(20, 30):
        (folder / "b" / f"{index:02d}.png").write_bytes(_tile(index))
    report = sync_pool(data, "image-folder", root=folder, train_size=None, test_size=8)
    after = read_manifest(data).set_index("id")
    assert report.added == {"train": 7, "test": 3} and report.items == {"train": 22, "test": 8}
    assert after.loc[before.index].equals(before)
    with pytest.raises(ValueError, match="data.test_size 9 exceeds the 8 usable test items"):
        sync_pool(data, "image-folder", root=folder, train_size=None, test_size=9)  # train items never move


def test_flat_folder_is_unlabelled_and_sizes_are_checked(tmp_path):
    root = tmp_path / "flat"
    root.mkdir()
    for index in range(6):
        (root / f"{index}.png").write_bytes(_tile(index * 10))
    report = sync_pool(tmp_path / "data", "image-folder", root=root, train_size=4, test_size=None)
    frame = read_manifest(tmp_path / "data")
    assert report.items == {"train": 4, "test": 2}
    assert frame["label"].isna().all() and (frame["class_name"] == "").all()
    with pytest.raises(ValueError, match="data.train_size 7 exceeds the 6 usable items"):
        sync_pool(tmp_path / "other", "image-folder", root=root, train_size=7, test_size=None)


def test_train_test_folders_fix_the_split_and_other_files_are_ignored(tmp_path):
    root = tmp_path / "split"
    for split, count in (("train", 3), ("test", 2)):
        for label in ("a", "b"):
            (root / split / label).mkdir(parents=True)
            for index in range(count):
                value = {"train": 0, "test": 100}[split] + index * 7 + (label == "b") * 50
                (root / split / label / f"{index}.png").write_bytes(_tile(value))
    (root / "README.md").write_text("# my photos\n")
    (root / "stray.png").write_bytes(_tile(250))
    report = sync_pool(tmp_path / "data", "image-folder", root=root, train_size=None, test_size=None)
    frame = read_manifest(tmp_path / "data")
    assert frame.groupby(["split", "class_name"]).size().to_dict() == {
        ("test", "a"): 2,
        ("test", "b"): 2,
        ("train", "a"): 3,
        ("train", "b"): 3,
    }
    assert report.unreadable == []
    assert [(entry["origin"].rsplit(":", 1)[1], entry["reason"]) for entry in report.ignored] == [
        ("README.md", "not an image file extension (.md)"),
        ("stray.png", "image outside the train/ and test/ folders"),
    ]


def test_empty_missing_and_unreadable_only_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=f"image folder {tmp_path / 'empty'} contains no image files"):
        sync_pool(tmp_path / "d1", "image-folder", root=tmp_path / "empty", train_size=None, test_size=0)
    with pytest.raises(ValueError, match=f"image folder {tmp_path / 'nowhere'} does not exist"):
        ingest_folder(tmp_path / "d2", tmp_path / "nowhere")
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ValueError, match="no readable images.*a.png"):
        ingest_folder(tmp_path / "d3", junk)
    assert not any((tmp_path / name).exists() for name in ("d1", "d2", "d3"))


# ------------------------------------------------------------------------------ referenced files


def test_folder_images_are_referenced_where_they_are(tmp_path):
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    inside = project / "incoming" / "cat"
    inside.mkdir(parents=True)
    (inside / "1.png").write_bytes(_tile(1))
    (elsewhere / "dog").mkdir(parents=True)
    (elsewhere / "dog" / "2.png").write_bytes(_tile(2))
    data = project / "data"
    ingest_folder(data, project / "incoming")
    ingest_folder(data, elsewhere, split="test")
    frame = read_manifest(data).set_index("class_name")
    assert frame.at["cat", "path"] == "../incoming/cat/1.png"  # inside the project: relative
    assert frame.at["cat", "origin"] == "folder:../incoming:cat/1.png"
    assert frame.at["dog", "path"] == (elsewhere / "dog" / "2.png").as_posix()  # outside: absolute
    assert frame.at["dog", "split"] == "test"
    assert sorted(p.name for p in data.iterdir()) == [MANIFEST_NAME, REPORT_NAME]  # no copies
    dataset = PoolDataset(data, verify_ids=True)
    assert [image_id(dataset.image(i)) for i in range(2)] == dataset.ids
    (elsewhere / "dog" / "2.png").write_bytes(_tile(3))  # a referenced file changed: caught
    with pytest.raises(ValueError, match="2.png does not match its id"):
        PoolDataset(data, split="test", verify_ids=True).image(0)


# ------------------------------------------------------------------------------ ingest


@pytest.fixture
def messy_folder(tmp_path) -> Path:
    """Class folders with awkward inputs: corrupt files, a duplicate, notes, hidden files."""
    root = tmp_path / "messy"
    cats, dogs = root / "cat", root / "dog"
    cats.mkdir(parents=True)
    dogs.mkdir()
    rng = np.random.default_rng(0)
    (cats / "rgb.png").write_bytes(_png(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)))
    Image.fromarray(rng.integers(0, 256, (9, 9), dtype=np.uint8)).save(cats / "gray.jpg", quality=90)
    (dogs / "a.png").write_bytes(_tile(40))
    (dogs / "copy_of_rgb.png").write_bytes((cats / "rgb.png").read_bytes())
    full = _png(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    (dogs / "truncated.png").write_bytes(full[: len(full) // 2])
    (dogs / "empty.jpg").write_bytes(b"")
    (cats / "notes.txt").write_text("not an image\n")
    (root / "README.md").write_text("# photos\n")
    (root / ".DS_Store").write_bytes(b"\0\0")
    (root / "loose.png").write_bytes(_tile(90))
    return root


def test_ingest_reports_duplicates_unreadable_and_ignored(messy_folder, tmp_path):
    data = tmp_path / "data"
    report = ingest_folder(data, messy_folder)
    name = lambda origin: origin.rsplit(":", 1)[1]  # noqa: E731
    reasons = {name(u["origin"]): u["reason"] for u in report.unreadable}
    assert set(reasons) == {"dog/truncated.png", "dog/empty.jpg"}
    assert "empty file" in reasons["dog/empty.jpg"] and "cannot decode" in reasons["dog/truncated.png"]
    assert [(name(d["origin"]), name(d["duplicate_of"])) for d in report.duplicates] == [
        ("dog/copy_of_rgb.png", "cat/rgb.png")
    ]
    assert {name(i["origin"]): i["reason"] for i in report.ignored} == {
        ".DS_Store": "hidden file",
        "README.md": "not an image file extension (.md)",
        "cat/notes.txt": "not an image file extension (.txt)",
    }
    assert (report.scanned, report.added) == (7, {"train": 4, "test": 0})
    frame = read_manifest(data)
    assert sorted(zip(frame["class_name"], frame["label"].fillna(-1))) == [
        ("", -1),
        ("cat", 0),
        ("cat", 0),
        ("dog", 1),
    ]  # the loose file is unlabelled
    written = json.loads((data / REPORT_NAME).read_text())
    assert written["counts"] == {
        "scanned": 7,
        "added": {"train": 4, "test": 0},
        "duplicates": 1,
        "unreadable": 2,
        "ignored": 3,
        "items": {"train": 4, "test": 0},
    }

    again = ingest_folder(data, messy_folder)
    assert again.num_added == 0 and len(again.duplicates) == 5  # the 4 already there + the copy
    assert read_manifest(data).equals(frame)


def test_unreadable_files_can_fail_the_ingest_before_anything_is_written(messy_folder, tmp_path):
    with pytest.raises(ValueError, match="2 unreadable file.*dog/empty.jpg: empty file.*dog/truncated.png"):
        ingest_folder(tmp_path / "data", messy_folder, on_unreadable="fail")
    assert not (tmp_path / "data").exists()


def test_ingest_into_a_pool_keeps_its_classes_and_finds_its_duplicates(small_pool, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(small_pool, data)
    old = read_manifest(data)
    bag = old[old["class_name"] == "Bag"].iloc[0]
    new = tmp_path / "new"
    (new / "Bag").mkdir(parents=True)
    (new / "zebra").mkdir()
    shutil.copy(data / bag["path"], new / "Bag" / "already_there.png")
    (new / "Bag" / "fresh.png").write_bytes(_png(np.full((28, 28), 7, np.uint8)))
    (new / "zebra" / "z.png").write_bytes(_png(np.full((28, 28), 9, np.uint8)))
    report = ingest_folder(data, new)
    assert [(d["id"], d["duplicate_of"]) for d in report.duplicates] == [(bag["id"], bag["origin"])]
    frame = read_manifest(data).set_index("id")
    added = frame.drop(index=old["id"])
    assert sorted(zip(added["class_name"], added["label"])) == [("Bag", 8), ("zebra", 10)]
    assert frame.loc[old["id"]].reset_index().equals(old)


def test_the_manifest_depends_on_content_not_on_file_order_or_names(tmp_path):
    pictures = {
        f"{label}/{index}.png": _tile(index * 9 + (label == "dog") * 100)
        for label in ("cat", "dog")
        for index in range(6)
    }

    def ingest(project: Path, names: dict[str, str], order: list[str]) -> Path:
        for key in order:
            target = project / "incoming" / names[key]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(pictures[key])
        ingest_folder(project / "data", project / "incoming")
        return project / "data"

    keys = sorted(pictures)
    same = {key: key for key in keys}
    first = ingest(tmp_path / "one", same, keys)
    reverse = ingest(tmp_path / "two", same, keys[::-1])
    assert (first / MANIFEST_NAME).read_bytes() == (reverse / MANIFEST_NAME).read_bytes()
    renamed = ingest(tmp_path / "three", {key: key.replace(".png", "_renamed.PNG") for key in keys}, keys)
    assert pool_version(renamed) == pool_version(first)
    columns = ["id", "label", "class_name", "split"]
    assert read_manifest(renamed)[columns].equals(read_manifest(first)[columns])
    assert read_manifest(renamed)["path"].str.endswith("_renamed.PNG").all()

    # Two folders ingested in either order give the same pool.
    halves = tmp_path / "halves"
    for half in ("x", "y"):
        for key in keys[::2] if half == "x" else keys[1::2]:
            (halves / half / key).parent.mkdir(parents=True, exist_ok=True)
            (halves / half / key).write_bytes(pictures[key])
    ingest_folder(halves / "xy", halves / "x")
    ingest_folder(halves / "xy", halves / "y")
    ingest_folder(halves / "yx", halves / "y")
    ingest_folder(halves / "yx", halves / "x")
    assert (halves / "xy" / MANIFEST_NAME).read_bytes() == (halves / "yx" / MANIFEST_NAME).read_bytes()


# ------------------------------------------------------------------------------ the manifest


def test_an_old_manifest_without_origin_still_reads_and_syncs(small_pool, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(small_pool, data)
    current = read_manifest(data)
    old = current.drop(columns="origin").sort_values(["split", "id"])  # the old layout and order
    old.to_csv(data / MANIFEST_NAME, index=False)
    frame = read_manifest(data)
    assert (frame["origin"] == "").all() and list(frame.columns) == list(current.columns)
    assert pool_version(data) == pool_version(small_pool)
    assert len(PoolDataset(data, verify_ids=True)) == len(current)
    report = sync_pool(data, "fashion-mnist", train_size=48, test_size=16)
    assert report.num_added == 0 and pool_version(data) == pool_version(small_pool)


def test_pool_version_ignores_paths_but_not_content(small_pool, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(small_pool, data)
    frame = read_manifest(data)
    frame.assign(path="/somewhere/else/" + frame["path"]).to_csv(data / MANIFEST_NAME, index=False)
    assert pool_version(data) == pool_version(small_pool)
    frame.assign(split=frame["split"].iloc[::-1].to_numpy()).to_csv(data / MANIFEST_NAME, index=False)
    assert pool_version(data) != pool_version(small_pool)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda f: f.assign(extra=1), r"has columns .*'extra'"),
        (lambda f: f.assign(split="valid"), "split 'valid' is not one of"),
        (lambda f: f.assign(label="x"), "label 'x' is not a class index"),
        (lambda f: f.assign(class_name="same"), "class_name 'same' stands for several classes"),
        (lambda f: pd.concat([f, f.iloc[:1]]), "lists id .* twice"),
    ],
)
def test_read_manifest_validates(small_pool, tmp_path, change, message):
    data = tmp_path / "data"
    data.mkdir()
    change(read_manifest(small_pool)).to_csv(data / MANIFEST_NAME, index=False)
    with pytest.raises(ValueError, match=message):
        read_manifest(data)


def test_symlinked_project_paths_stay_as_the_user_wrote_them(tmp_path):
    """Paths are kept relative through a symlinked folder inside the project (no resolve())."""
    real = tmp_path / "storage"
    (real / "cat").mkdir(parents=True)
    (real / "cat" / "1.png").write_bytes(_tile(3))
    project = tmp_path / "project"
    project.mkdir()
    os.symlink(real, project / "incoming")
    ingest_folder(project / "data", project / "incoming")
    assert read_manifest(project / "data")["path"].tolist() == ["../incoming/cat/1.png"]

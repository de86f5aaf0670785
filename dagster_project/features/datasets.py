"""Image sources, deterministic pool preparation and the pool dataset.

A *source* (Fashion-MNIST, CIFAR-10/100, an image folder) yields raw images with an optional label
and an optional split. :func:`prepare_pool` turns a source into a *pool directory*::

    <out_dir>/images/<split>/<id>.png   one PNG per item (8-bit L or RGB, fixed encoder settings)
    <out_dir>/manifest.csv              id, path, label, class_name, split
    <out_dir>/pool_report.json          what was skipped (unreadable) or collapsed (duplicates)

An item's id is the content hash of its normalised pixels, so the same picture always gets the same
id and file name, and identical pictures are collapsed. Everything written is byte-for-byte
reproducible from the same source and arguments (no timestamps, stable order), which keeps the
DVC-tracked ``data/`` clean when it is regenerated on another machine.
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageOps
from torchvision import transforms
from tqdm.auto import tqdm

from dagster_project.features._network import host_reachable

__all__ = [
    "DEFAULT_TEST_SIZE",
    "DEFAULT_TRAIN_SIZE",
    "FASHION_MNIST_CLASSES",
    "SOURCES",
    "ImageSource",
    "PoolDataset",
    "PoolReport",
    "UnreadableImageError",
    "build_transform",
    "image_id",
    "normalize_image",
    "open_source",
    "prepare_pool",
    "read_manifest",
]

DEFAULT_TRAIN_SIZE = 10_000
DEFAULT_TEST_SIZE = 2_000
SPLITS = ("train", "test")
SOURCES = ("fashion-mnist", "cifar10", "cifar100", "image-folder")
MANIFEST_NAME = "manifest.csv"
REPORT_NAME = "pool_report.json"
IMAGES_DIR = "images"
MANIFEST_COLUMNS = ("id", "path", "label", "class_name", "split")
ON_UNREADABLE = ("skip", "fail")

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
FASHION_MNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
_FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_DOWNLOAD_ROOT = Path.home() / ".cache" / "bilaf" / "datasets"
# PNG settings are part of the data format: changing them changes every file in data/.
_PNG_SETTINGS = {"format": "PNG", "optimize": False, "compress_level": 6}
_ID_LENGTH = 16


class UnreadableImageError(ValueError):
    """An input file is not a decodable image (corrupt, truncated, empty, wrong format...)."""


# --------------------------------------------------------------------------------------------
# Image normalisation and ids
# --------------------------------------------------------------------------------------------

def normalize_image(image: Image.Image) -> Image.Image:
    """Return ``image`` as a fresh 8-bit ``L`` (grayscale) or ``RGB`` image without metadata.

    EXIF orientation is applied, transparency is composited onto white, 16-bit grayscale is scaled
    to 8 bits (65535 -> 255). Float images are rejected: their value range is unknown.
    """
    image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        wide = np.asarray(image, dtype=np.int64).clip(0, 65535)
        result = Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8), mode="L")
    elif mode == "F":
        raise UnreadableImageError("unsupported image mode 'F' (32-bit float pixels)")
    elif mode in ("1", "L"):
        result = image.convert("L")
    elif mode in ("LA", "La", "PA", "RGBA", "RGBa") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        flattened = Image.alpha_composite(background, rgba)
        result = flattened.convert("L" if mode in ("LA", "La") else "RGB")
    else:
        result = image.convert("RGB")
    # A fresh image carries no .info (ICC profile, dpi, text chunks) into the PNG we write.
    return Image.frombytes(result.mode, result.size, result.tobytes())


def image_id(image: Image.Image) -> str:
    """Content hash of a normalised image: sha256 over mode, size and pixels (16 hex chars)."""
    header = f"{image.mode}:{image.width}x{image.height}:".encode()
    return hashlib.sha256(header + image.tobytes()).hexdigest()[:_ID_LENGTH]


def _decode_file(path: Path) -> Image.Image:
    """Decode an image file completely (truncation is detected here, not later)."""
    try:
        size = path.stat().st_size
    except OSError as error:
        raise UnreadableImageError(f"cannot read file ({error.strerror or error})") from error
    if size == 0:
        raise UnreadableImageError("empty file (0 bytes)")
    try:
        with Image.open(path) as image:
            image.load()
            return normalize_image(image)
    except Image.UnidentifiedImageError as error:
        raise UnreadableImageError("not an image (format not recognised)") from error
    except UnreadableImageError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as error:
        raise UnreadableImageError(f"cannot decode image ({type(error).__name__}: {error})") from error


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, **_PNG_SETTINGS)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SourceRecord:
    """Cheap metadata of one source image; the pixels are read by :meth:`ImageSource.load`."""

    origin: str  # where the image comes from, e.g. "train/00042" or "cat/img_1.jpg"
    label: int | None
    split: str | None  # split given by the source; None lets prepare_pool draw it


class ImageSource(ABC):
    """A finite, ordered collection of raw images with optional labels and splits."""

    name: str
    classes: tuple[str, ...] | None
    records: Sequence[SourceRecord]

    @abstractmethod
    def load(self, index: int) -> Image.Image:
        """Decoded, normalised image ``index``; raises :class:`UnreadableImageError`."""


class ArraySource(ImageSource):
    """Images held as a uint8 array (N, H, W) or (N, H, W, 3), e.g. Fashion-MNIST or CIFAR."""

    def __init__(self, name: str, classes: Sequence[str], parts: dict[str, tuple[np.ndarray, np.ndarray]]):
        self.name = name
        self.classes = tuple(classes)
        self._images: list[np.ndarray] = []
        records: list[SourceRecord] = []
        for split, (images, labels) in parts.items():
            if len(images) != len(labels):
                raise ValueError(f"{name} {split}: {len(images)} images but {len(labels)} labels")
            width = len(str(len(images) - 1))
            records.extend(
                SourceRecord(f"{split}/{index:0{width}d}", int(label), split)
                for index, label in enumerate(labels)
            )
            self._images.extend(images)
        self.records = records

    def load(self, index: int) -> Image.Image:
        return normalize_image(Image.fromarray(self._images[index]))


class ImageFolderSource(ImageSource):
    """Image files under ``root``.

    Layouts: ``root/<class>/**/<file>`` (labelled by class folder; loose files at the top are
    unlabelled), a flat folder of unlabelled images, or ``root/train/...`` + ``root/test/...``
    where each of the two uses one of the former layouts and fixes the split.
    """

    def __init__(self, root: Path):
        root = Path(root)
        if not root.exists():
            raise ValueError(f"image folder {root} does not exist")
        if not root.is_dir():
            raise ValueError(f"image folder {root} is not a directory")
        top_dirs = sorted(entry.name for entry in root.iterdir() if entry.is_dir())
        split_dirs = [name for name in top_dirs if name in SPLITS]
        if "train" in split_dirs and set(top_dirs) <= set(SPLITS):
            parts = {split: root / split for split in split_dirs}
            class_names = sorted({d.name for part in parts.values() for d in part.iterdir() if d.is_dir()})
        else:
            parts = {None: root}
            class_names = top_dirs
        self.name = "image-folder"
        self.root = root
        self.classes = tuple(class_names) or None
        class_index = {name: index for index, name in enumerate(class_names)}
        self._paths: list[Path] = []
        records: list[SourceRecord] = []
        for split, part_root in parts.items():
            for path in _walk_files(part_root):
                relative = path.relative_to(part_root)
                label = class_index[relative.parts[0]] if len(relative.parts) > 1 else None
                records.append(SourceRecord(path.relative_to(root).as_posix(), label, split))
                self._paths.append(path)
        # Loose files next to train/ and test/ belong to no split: listed, never silently dropped.
        if None not in parts:
            for path in sorted(p for p in root.iterdir() if not p.is_dir()):
                records.append(SourceRecord(path.relative_to(root).as_posix(), None, "outside-splits"))
                self._paths.append(path)
        if not records:
            raise ValueError(f"image folder {root} contains no files")
        self.records = records

    def load(self, index: int) -> Image.Image:
        if self.records[index].split == "outside-splits":
            raise UnreadableImageError("file outside the train/ and test/ folders")
        return _decode_file(self._paths[index])


def _walk_files(root: Path) -> list[Path]:
    """All files under ``root`` in a filesystem-independent order (sorted relative paths)."""
    found = []
    for directory, subdirs, files in os.walk(root, followlinks=True):
        subdirs.sort()
        found.extend(Path(directory) / name for name in files)
    return sorted(found, key=lambda path: path.relative_to(root).as_posix())


def _read_idx(path: Path, expected_dims: int) -> np.ndarray:
    """Read a gzip'ed IDX file (the MNIST format) into a uint8 array."""
    try:
        with gzip.open(path, "rb") as stream:
            data = stream.read()
    except (OSError, EOFError) as error:
        raise ValueError(f"cannot read IDX file {path}: {error}") from error
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08 or data[3] != expected_dims:
        raise ValueError(f"{path} is not a uint8 IDX file with {expected_dims} dimension(s)")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(expected_dims))
    offset = 4 + 4 * expected_dims
    if len(data) - offset != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape} but holds {len(data) - offset} bytes")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


def _fashion_mnist_dir(root: Path | None) -> Path:
    """Directory holding the four Fashion-MNIST .gz files; downloads them when needed and online."""
    names = [name for pair in _FASHION_MNIST_FILES.values() for name in pair]
    candidates = [root, root / "FashionMNIST" / "raw"] if root is not None else [
        FASHION_MNIST_DEBIAN_DIR, _DOWNLOAD_ROOT / "FashionMNIST" / "raw"]
    for candidate in candidates:
        if all((candidate / name).is_file() for name in names):
            return candidate
    download_root = root if root is not None else _DOWNLOAD_ROOT
    searched = ", ".join(str(c) for c in candidates)
    if not host_reachable("fashion-mnist.s3-website.eu-central-1.amazonaws.com", 80):
        raise ValueError(
            f"Fashion-MNIST files not found (looked in {searched}) and no network to download them: "
            "install the Debian package 'dataset-fashion-mnist' or pass root= a folder with "
            f"{', '.join(names)}")
    from torchvision.datasets import FashionMNIST

    for split in SPLITS:
        FashionMNIST(download_root, train=split == "train", download=True)
    return download_root / "FashionMNIST" / "raw"


def fashion_mnist_source(root: Path | None = None) -> ArraySource:
    directory = _fashion_mnist_dir(root)
    parts = {}
    for split, (images_name, labels_name) in _FASHION_MNIST_FILES.items():
        images = _read_idx(directory / images_name, 3)
        labels = _read_idx(directory / labels_name, 1)
        parts[split] = (images, labels)
    return ArraySource("fashion-mnist", FASHION_MNIST_CLASSES, parts)


def cifar_source(num_classes: int, root: Path | None = None) -> ArraySource:
    """CIFAR-10/100 from torchvision's python-pickle layout; downloaded only when online."""
    from torchvision.datasets import CIFAR10, CIFAR100

    dataset_class = {10: CIFAR10, 100: CIFAR100}[num_classes]
    root = Path(root) if root is not None else _DOWNLOAD_ROOT
    name = f"cifar{num_classes}"
    parts = {}
    for split in SPLITS:
        try:
            dataset = dataset_class(root, train=split == "train", download=False)
        except RuntimeError:
            if not host_reachable("www.cs.toronto.edu"):
                raise ValueError(
                    f"{name} files not found or corrupted under {root} (expected {root}/"
                    f"{dataset_class.base_folder}) and no network to download them") from None
            dataset = dataset_class(root, train=split == "train", download=True)
        parts[split] = (np.asarray(dataset.data), np.asarray(dataset.targets))
    return ArraySource(name, dataset.classes, parts)


def default_source_root(source: str) -> Path | None:
    """Where a source is read from when no root is given (None for image-folder, which needs one)."""
    if source == "fashion-mnist":
        debian = Path(FASHION_MNIST_DEBIAN_DIR)
        return debian if debian.is_dir() else _DOWNLOAD_ROOT / "FashionMNIST" / "raw"
    if source in ("cifar10", "cifar100"):
        return _DOWNLOAD_ROOT
    return None


def open_source(source: str, root: Path | None = None) -> ImageSource:
    """Open a source by name: one of :data:`SOURCES` (``image-folder`` needs ``root``)."""
    if source == "fashion-mnist":
        return fashion_mnist_source(root)
    if source in ("cifar10", "cifar100"):
        return cifar_source(int(source.removeprefix("cifar")), root)
    if source == "image-folder":
        if root is None:
            raise ValueError("source 'image-folder' needs root= the folder holding the images")
        return ImageFolderSource(root)
    raise ValueError(f"unknown source {source!r}; expected one of {', '.join(SOURCES)}")


# --------------------------------------------------------------------------------------------
# Pool preparation
# --------------------------------------------------------------------------------------------

@dataclass
class PoolReport:
    """What :func:`prepare_pool` did. ``to_json()`` is what lands in ``pool_report.json``."""

    source: str
    out_dir: Path
    parameters: dict
    scanned: int
    selected: dict[str, int]
    unreadable: list[dict] = field(default_factory=list)
    duplicates: list[dict] = field(default_factory=list)
    files_written: int = 0
    files_removed: int = 0

    @property
    def num_items(self) -> int:
        return sum(self.selected.values())

    def to_json(self) -> str:
        content = {
            "source": self.source,
            "parameters": self.parameters,
            "counts": {
                "scanned": self.scanned,
                "unreadable": len(self.unreadable),
                "duplicates": len(self.duplicates),
                "selected": self.selected,
            },
            "unreadable": self.unreadable,
            "duplicates": self.duplicates,
        }
        return json.dumps(content, indent=2, sort_keys=True) + "\n"


def _draw_stratified(candidates: list[int], labels: list[int | None], size: int | None,
                     rng: np.random.Generator, what: str) -> list[int]:
    """Draw ``size`` of ``candidates`` keeping class proportions (largest remainder), in source order."""
    if size is None or size == len(candidates):
        return list(candidates)
    if size < 0:
        raise ValueError(f"{what} size must be >= 0, got {size}")
    if size > len(candidates):
        raise ValueError(f"{what} size {size} exceeds the {len(candidates)} usable items available")
    by_class: dict[int, list[int]] = {}
    for index in candidates:
        label = labels[index]
        by_class.setdefault(-1 if label is None else label, []).append(index)
    keys = sorted(by_class)
    exact = np.array([size * len(by_class[k]) / len(candidates) for k in keys])
    quota = np.floor(exact).astype(int)
    # Largest fractional parts get the remaining slots; ties go to the lower class index.
    order = sorted(range(len(keys)), key=lambda i: (-(exact[i] - quota[i]), keys[i]))
    for i in order[: size - int(quota.sum())]:
        quota[i] += 1
    chosen: list[int] = []
    for key, count in zip(keys, quota):
        members = by_class[key]
        picks = rng.choice(len(members), size=int(count), replace=False)
        chosen.extend(members[p] for p in picks)
    return sorted(chosen)


def _assign_splits(records: Sequence[SourceRecord], usable: list[int], train_size: int | None,
                   test_size: int | None, rng: np.random.Generator) -> dict[str, list[int]]:
    labels = [record.label for record in records]
    given = {split: [i for i in usable if records[i].split == split] for split in SPLITS}
    free = [i for i in usable if records[i].split is None]
    if free and any(given.values()):
        raise ValueError("a source must either give every item a split or none")
    if not free:
        return {
            "train": _draw_stratified(given["train"], labels, train_size, rng, "train"),
            "test": _draw_stratified(given["test"], labels, test_size, rng, "test"),
        }
    # No split from the source: explicit sizes are drawn first (test, then train); a size of None
    # takes what is left, and with both None everything is train.
    n_test = test_size if test_size is not None else (0 if train_size is None else len(free) - train_size)
    if n_test < 0:
        raise ValueError(f"train size {train_size} exceeds the {len(free)} usable items available")
    test = _draw_stratified(free, labels, n_test, rng, "test")
    taken = set(test)
    rest = [i for i in free if i not in taken]
    train = _draw_stratified(rest, labels, train_size, rng, "train")
    return {"train": train, "test": test}


def _write_if_changed(path: Path, data: bytes) -> bool:
    """Write ``data`` atomically unless ``path`` already holds exactly these bytes."""
    try:
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)
    return True


def _manifest_bytes(rows: list[tuple[str, str, int | None, str, str]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    for item_id, path, label, class_name, split in rows:
        writer.writerow([item_id, path, "" if label is None else label, class_name, split])
    return buffer.getvalue().encode()


def prepare_pool(source: str, out_dir: Path, *, root: Path | None = None,
                 train_size: int | None = DEFAULT_TRAIN_SIZE, test_size: int | None = DEFAULT_TEST_SIZE,
                 seed: int = 0, on_unreadable: str = "skip") -> PoolReport:
    """Write a deterministic pool (PNGs + ``manifest.csv`` + ``pool_report.json``) into ``out_dir``.

    Items are drawn per split, stratified by label, with ``np.random.default_rng(seed)``; a size
    of None takes every item. Unreadable inputs are recorded in the report and skipped, or fail
    the call with ``on_unreadable="fail"``; identical images are collapsed (first one kept) and
    recorded. Re-running with unchanged inputs rewrites no file; images no longer selected are
    removed from ``out_dir/images``.
    """
    if on_unreadable not in ON_UNREADABLE:
        raise ValueError(f"on_unreadable must be one of {ON_UNREADABLE}, got {on_unreadable!r}")
    for what, size in (("train_size", train_size), ("test_size", test_size)):
        if size is not None and (not isinstance(size, (int, np.integer)) or size < 0):
            raise ValueError(f"{what} must be a non-negative integer or None, got {size!r}")
    out_dir = Path(out_dir)
    image_source = open_source(source, root)
    records = image_source.records

    ids: list[str | None] = [None] * len(records)
    unreadable: list[dict] = []
    for index in tqdm(range(len(records)), desc=f"scan {image_source.name}", unit="img"):
        try:
            ids[index] = image_id(image_source.load(index))
        except UnreadableImageError as error:
            unreadable.append({"origin": records[index].origin, "reason": str(error)})
    if unreadable and on_unreadable == "fail":
        listed = "; ".join(f"{u['origin']}: {u['reason']}" for u in unreadable[:10])
        more = f" (and {len(unreadable) - 10} more)" if len(unreadable) > 10 else ""
        raise ValueError(f"{len(unreadable)} unreadable file(s) in {source} source: {listed}{more}")

    first_by_id: dict[str, int] = {}
    duplicates: list[dict] = []
    usable: list[int] = []
    for index, item_id in enumerate(ids):
        if item_id is None:
            continue
        if item_id in first_by_id:
            kept = records[first_by_id[item_id]]
            duplicates.append({"origin": records[index].origin, "id": item_id,
                               "duplicate_of": kept.origin, "label": records[index].label,
                               "kept_label": kept.label})
            continue
        first_by_id[item_id] = index
        usable.append(index)
    if not usable:
        raise ValueError(f"no readable images in {source} source ({len(unreadable)} unreadable, "
                         f"first: {unreadable[0]['origin']}: {unreadable[0]['reason']})")

    splits = _assign_splits(records, usable, train_size, test_size, np.random.default_rng(seed))
    classes = image_source.classes or ()
    rows = []
    for split in SPLITS:
        for index in splits[split]:
            label = records[index].label
            rows.append((ids[index], f"{IMAGES_DIR}/{split}/{ids[index]}.png", label,
                         "" if label is None else classes[label], split))

    report = PoolReport(
        source=image_source.name, out_dir=out_dir,
        parameters={"train_size": train_size, "test_size": test_size, "seed": seed,
                    "on_unreadable": on_unreadable},
        scanned=len(records), selected={split: len(splits[split]) for split in SPLITS},
        unreadable=unreadable, duplicates=duplicates)

    wanted = set()
    for split in SPLITS:
        for index in tqdm(splits[split], desc=f"write {split}", unit="img"):
            path = out_dir / IMAGES_DIR / split / f"{ids[index]}.png"
            wanted.add(path)
            report.files_written += _write_if_changed(path, _png_bytes(image_source.load(index)))
    images_root = out_dir / IMAGES_DIR
    for stale in sorted(p for p in images_root.rglob("*") if p.is_file() and p not in wanted):
        stale.unlink()
        report.files_removed += 1
    for directory in sorted((p for p in images_root.rglob("*") if p.is_dir()), reverse=True):
        if not any(directory.iterdir()):
            directory.rmdir()
    report.files_written += _write_if_changed(out_dir / MANIFEST_NAME, _manifest_bytes(rows))
    report.files_written += _write_if_changed(out_dir / REPORT_NAME, report.to_json().encode())
    return report


# --------------------------------------------------------------------------------------------
# Reading a pool
# --------------------------------------------------------------------------------------------

def read_manifest(data_dir: Path) -> pd.DataFrame:
    """The pool's manifest: columns id, path, label (nullable Int64), class_name, split."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise ValueError(f"data directory {data_dir} does not exist; run `bilaf data prepare` first")
    manifest = data_dir / MANIFEST_NAME
    if not manifest.is_file():
        raise ValueError(f"no {MANIFEST_NAME} in {data_dir}; run `bilaf data prepare` first")
    frame = pd.read_csv(manifest, dtype={"id": str, "path": str, "class_name": str, "split": str},
                        keep_default_na=False, na_values={"label": [""]})
    missing = [column for column in MANIFEST_COLUMNS if column not in frame.columns]
    if missing:
        raise ValueError(f"{manifest} lacks column(s) {missing}")
    frame["label"] = frame["label"].astype("Int64")
    if frame["id"].duplicated().any():
        raise ValueError(f"{manifest} lists id {frame['id'][frame['id'].duplicated()].iloc[0]} twice")
    return frame[list(MANIFEST_COLUMNS)]


class _ToRGB:
    """Grayscale/any mode -> RGB, so one backbone stem serves every source."""

    def __call__(self, image: Image.Image) -> Image.Image:
        return image if image.mode == "RGB" else image.convert("RGB")


class _ToNormalizedTensor:
    """RGB PIL image -> float32 tensor (3, H, W), ``(pixel / 255 - mean) / std`` per channel.

    Done in numpy: torchvision's ToTensor + Normalize run tiny multi-threaded torch ops per image,
    which cost ~15x more on a busy 2-core machine.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std need 3 values each (std > 0), got {mean!r}, {std!r}")
        self.scale = (1.0 / (255.0 * np.asarray(std, dtype=np.float64))).astype(np.float32)
        self.offset = (np.asarray(mean, dtype=np.float64) / np.asarray(std, dtype=np.float64)).astype(np.float32)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        pixels = np.asarray(image, dtype=np.float32) * self.scale - self.offset
        return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))


def build_transform(image_size: int, mean: Sequence[float], std: Sequence[float]) -> transforms.Compose:
    """PIL image (any mode) -> normalised float tensor (3, image_size, image_size), for embedding.

    Bicubic resize to exactly ``image_size``², aspect ratio not kept, no crop (finetuning has its
    own augmenting transform in ``dagster_project.training``). Grayscale is resized first and then
    replicated to RGB (same result, a third of the work).
    """
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size}")
    resize = transforms.Resize((image_size, image_size), interpolation=transforms.InterpolationMode.BICUBIC)
    return transforms.Compose([resize, _ToRGB(), _ToNormalizedTensor(mean, std)])


class PoolDataset(torch.utils.data.Dataset):
    """Items of a prepared pool as ``(image, label)``; label is -1 for unlabelled items.

    ``split`` restricts to one split, ``ids`` to given item ids (in that order). With
    ``verify_ids=True`` every image is re-hashed and must match its id, which guarantees that
    anything cached under that id was computed from these very pixels.
    """

    def __init__(self, data_dir: Path, *, split: str | None = None, ids: Sequence[str] | None = None,
                 transform=None, verify_ids: bool = False):
        self.data_dir = Path(data_dir)
        frame = read_manifest(self.data_dir)
        if split is not None:
            if split not in SPLITS:
                raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
            frame = frame[frame["split"] == split]
        if ids is not None:
            by_id = frame.set_index("id", drop=False)
            unknown = [i for i in ids if i not in by_id.index]
            if unknown:
                raise ValueError(f"{len(unknown)} id(s) not in {self.data_dir} (first: {unknown[0]})")
            frame = by_id.loc[list(ids)]
        self.frame = frame.reset_index(drop=True)
        self.ids: list[str] = self.frame["id"].tolist()
        self.labels = self.frame["label"].fillna(-1).to_numpy(dtype=np.int64)
        self.transform = transform
        self.verify_ids = verify_ids

    def __len__(self) -> int:
        return len(self.frame)

    def image(self, index: int) -> Image.Image:
        path = self.data_dir / self.frame.at[index, "path"]
        try:
            image = _decode_file(path)
        except UnreadableImageError as error:
            raise ValueError(f"pool image {path}: {error}") from error
        if self.verify_ids and image_id(image) != self.ids[index]:
            raise ValueError(f"pool image {path} does not match its id {self.ids[index]} "
                             "(file changed after `bilaf data prepare`)")
        return image

    def __getitem__(self, index: int):
        image = self.image(index)
        return (self.transform(image) if self.transform else image), int(self.labels[index])

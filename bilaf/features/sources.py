"""Image sources: where raw images come from (Fashion-MNIST, CIFAR-10/100, a folder of files).

A source is a finite, ordered list of records (a name, an optional label, an optional split, and
for folder sources the file itself) plus a way to load each one as a normalised image. Sources
only read; :mod:`bilaf.features.pool` decides what enters the pool.
"""

from __future__ import annotations

import gzip
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from bilaf import choices
from bilaf.errors import InvalidInputError, MissingFileError, OfflineError
from bilaf.features._network import host_reachable
from bilaf.features.images import decode_image_file, image_id, is_image_name, normalize_image, pixels_id

__all__ = [
    "FASHION_MNIST_CLASSES",
    "SOURCES",
    "SPLITS",
    "ArraySource",
    "ImageFolderSource",
    "ImageSource",
    "SourceRecord",
    "cifar_source",
    "default_source_root",
    "fashion_mnist_source",
    "open_source",
]

SPLITS = choices.SPLITS
SOURCES = choices.SOURCES

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
FASHION_MNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
_FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_DOWNLOAD_ROOT = Path.home() / ".cache" / "bilaf" / "datasets"


@dataclass(frozen=True)
class SourceRecord:
    """Cheap metadata of one source image; the pixels are read by :meth:`ImageSource.load`."""

    name: str  # the image's name within its source, e.g. "train/00042" or "cat/img_1.jpg"
    label: int | None  # index into the source's classes; None: unlabelled
    split: str | None  # split fixed by the source; None lets the pool draw it
    file: Path | None = None  # the file holding the image (folder sources): referenced, not copied


class ImageSource(ABC):
    """A finite, ordered collection of raw images with optional labels and splits."""

    name: str
    classes: tuple[str, ...]
    records: Sequence[SourceRecord]
    ignored: Sequence[tuple[str, str]] = ()  # (name, reason) of files skipped as not images

    @abstractmethod
    def load(self, index: int) -> Image.Image:
        """Decoded, normalised image ``index``; raises :class:`UnreadableImageError`."""

    def image_id(self, index: int) -> str:
        """Content id of image ``index`` (what :func:`image_id` gives for :meth:`load`)."""
        return image_id(self.load(index))


class ArraySource(ImageSource):
    """Images held as a uint8 array (N, H, W) or (N, H, W, 3), e.g. Fashion-MNIST or CIFAR."""

    def __init__(self, name: str, classes: Sequence[str], parts: dict[str, tuple[np.ndarray, np.ndarray]]):
        self.name = name
        self.classes = tuple(classes)
        self._images: list[np.ndarray] = []
        records: list[SourceRecord] = []
        for split, (images, labels) in parts.items():
            if images.dtype != np.uint8 or not (images.ndim == 3 or (images.ndim == 4 and images.shape[3] == 3)):
                raise InvalidInputError(
                    f"{name} {split}: expected uint8 images (N, H, W) or (N, H, W, 3), got "
                    f"{images.dtype} {images.shape}"
                )
            if len(images) != len(labels):
                raise InvalidInputError(f"{name} {split}: {len(images)} images but {len(labels)} labels")
            width = len(str(len(images) - 1))
            records.extend(
                SourceRecord(f"{split}/{index:0{width}d}", int(label), split) for index, label in enumerate(labels)
            )
            self._images.extend(images)
        self.records = records

    def load(self, index: int) -> Image.Image:
        return normalize_image(Image.fromarray(self._images[index]))

    def image_id(self, index: int) -> str:
        # A uint8 (H, W) or (H, W, 3) array already is a normalised L or RGB image: hash it directly
        # (ten times faster than the PIL round trip; equality is tested).
        pixels = self._images[index]
        mode = "L" if pixels.ndim == 2 else "RGB"
        return pixels_id(mode, pixels.shape[1], pixels.shape[0], np.ascontiguousarray(pixels).tobytes())


class ImageFolderSource(ImageSource):
    """Image files under ``root``, read where they are.

    Layouts: ``root/<class>/**/<file>`` (labelled by class folder; loose files at the top are
    unlabelled), a flat folder of unlabelled images, or ``root/train/...`` + ``root/test/...``
    where each of the two uses one of the former layouts and fixes the split. ``split`` puts the
    whole folder in one split (the train/test layout is then refused: it would be read as classes).

    Only files with an image extension are records; every other file (README.md, labels.csv,
    hidden files and folders, loose files beside train/ and test/) is listed in ``ignored`` with
    the reason, never silently dropped.
    """

    def __init__(self, root: Path, split: str | None = None):
        root = Path(root)
        if not root.exists():
            raise MissingFileError(f"image folder {root} does not exist")
        if not root.is_dir():
            raise InvalidInputError(f"image folder {root} is not a directory")
        if split is not None and split not in SPLITS:
            raise InvalidInputError(f"split must be one of {SPLITS}, got {split!r}")
        top_dirs = sorted(entry.name for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith("."))
        split_layout = "train" in top_dirs and set(top_dirs) <= set(SPLITS)
        if split_layout and split is not None:
            raise InvalidInputError(
                f"image folder {root} holds train/ and test/ folders: add each one on its own "
                f"with its split (e.g. {root / 'train'} as train)"
            )
        parts = [root / name for name in top_dirs] if split_layout else [root]
        self.name = "image-folder"
        self.root = root
        self.classes = tuple(
            sorted(
                {
                    entry.name
                    for part in parts
                    for entry in part.iterdir()
                    if entry.is_dir() and not entry.name.startswith(".")
                }
            )
        )
        class_index = {name: index for index, name in enumerate(self.classes)}
        files, self.ignored = _walk_folder(root)
        records = []
        for path in files:
            name = path.relative_to(root).as_posix()
            if split_layout:
                part_split, _, inside = name.partition("/")
                if not inside:
                    self.ignored.append((name, "image outside the train/ and test/ folders"))
                    continue
            else:
                part_split, inside = split, name
            class_folder, _, rest = inside.partition("/")
            records.append(SourceRecord(name, class_index[class_folder] if rest else None, part_split, path))
        self.ignored.sort()
        if not records:
            example = f" ({len(self.ignored)} other file(s) ignored, e.g. {self.ignored[0][0]})" if self.ignored else ""
            raise InvalidInputError(f"image folder {root} contains no image files{example}")
        self.records = records

    def load(self, index: int) -> Image.Image:
        return decode_image_file(self.records[index].file)


def _walk_folder(root: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """Image files under ``root`` in a filesystem-independent order (sorted relative paths), and
    (relative name, reason) for everything skipped: hidden folders, hidden or non-image files."""
    found: list[Path] = []
    ignored: list[tuple[str, str]] = []
    for directory, subdirs, files in os.walk(root, followlinks=True):
        here = Path(directory)
        for name in [d for d in subdirs if d.startswith(".")]:
            ignored.append(((here / name).relative_to(root).as_posix() + "/", "hidden folder"))
            subdirs.remove(name)
        subdirs.sort()
        for name in files:
            if is_image_name(name):
                found.append(here / name)
            else:
                reason = (
                    "hidden file"
                    if name.startswith(".")
                    else f"not an image file extension ({Path(name).suffix.lower() or 'none'})"
                )
                ignored.append(((here / name).relative_to(root).as_posix(), reason))
    return sorted(found, key=lambda path: path.relative_to(root).as_posix()), ignored


def _read_idx(path: Path, expected_dims: int) -> np.ndarray:
    """Read a gzip'ed IDX file (the MNIST format) into a uint8 array."""
    try:
        with gzip.open(path, "rb") as stream:
            data = stream.read()
    except (OSError, EOFError) as error:
        raise InvalidInputError(f"cannot read IDX file {path}: {error}") from error
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08 or data[3] != expected_dims:
        raise InvalidInputError(f"{path} is not a uint8 IDX file with {expected_dims} dimension(s)")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(expected_dims))
    offset = 4 + 4 * expected_dims
    if len(data) - offset != int(np.prod(shape)):
        raise InvalidInputError(f"{path}: header says shape {shape} but holds {len(data) - offset} bytes")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


def _fashion_mnist_dir(root: Path | None) -> Path:
    """Directory holding the four Fashion-MNIST .gz files; downloads them when needed and online."""
    names = [name for pair in _FASHION_MNIST_FILES.values() for name in pair]
    candidates = (
        [root, root / "FashionMNIST" / "raw"]
        if root is not None
        else [FASHION_MNIST_DEBIAN_DIR, _DOWNLOAD_ROOT / "FashionMNIST" / "raw"]
    )
    for candidate in candidates:
        if all((candidate / name).is_file() for name in names):
            return candidate
    download_root = root if root is not None else _DOWNLOAD_ROOT
    searched = ", ".join(str(c) for c in candidates)
    if not host_reachable("fashion-mnist.s3-website.eu-central-1.amazonaws.com", 80):
        raise OfflineError(
            f"Fashion-MNIST files not found (looked in {searched}) and no network to download them: "
            "install the Debian package 'dataset-fashion-mnist' or pass root= a folder with "
            f"{', '.join(names)}"
        )
    from torchvision.datasets import FashionMNIST

    for split in SPLITS:
        FashionMNIST(download_root, train=split == "train", download=True)
    return download_root / "FashionMNIST" / "raw"


def fashion_mnist_source(root: Path | None = None) -> ArraySource:
    """Fashion-MNIST from its four IDX files (Debian's package, ``root``, or a download)."""
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
                raise OfflineError(
                    f"{name} files not found or corrupted under {root} (expected {root}/"
                    f"{dataset_class.base_folder}) and no network to download them"
                ) from None
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
            raise InvalidInputError("source 'image-folder' needs root= the folder holding the images")
        return ImageFolderSource(root)
    raise InvalidInputError(f"unknown source {source!r}; expected one of {', '.join(SOURCES)}")

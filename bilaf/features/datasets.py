"""Reading a pool for torch: :class:`PoolDataset` (its transforms are in ``features.transforms``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bilaf.errors import InvalidInputError
from bilaf.features.images import UnreadableImageError, decode_image_file, image_id
from bilaf.features.pool import read_manifest
from bilaf.features.sources import SPLITS

__all__ = ["PoolDataset"]


class PoolDataset(torch.utils.data.Dataset):
    """Items of a pool as ``(image, label)``; label is -1 for unlabelled items.

    Paths in the manifest are relative to ``data_dir`` or absolute (referenced files outside
    the project); both resolve as ``data_dir / path``.

    ``split`` restricts to one split, ``ids`` to given item ids (in that order); ``manifest`` (rows
    of the manifest: id, path, label) saves reading the whole manifest for a few items. With
    ``verify_ids=True`` every image is re-hashed and must match its id, which guarantees that
    anything cached under that id was computed from these very pixels.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        split: str | None = None,
        ids: Sequence[str] | None = None,
        transform=None,
        verify_ids: bool = False,
        manifest=None,
    ):
        self.data_dir = Path(data_dir)
        frame = read_manifest(self.data_dir) if manifest is None else manifest
        if split is not None:
            if split not in SPLITS:
                raise InvalidInputError(f"split must be one of {SPLITS}, got {split!r}")
            frame = frame[frame["split"] == split]
        if ids is not None:
            by_id = frame.set_index("id", drop=False)
            unknown = [i for i in ids if i not in by_id.index]
            if unknown:
                raise InvalidInputError(f"{len(unknown)} id(s) not in {self.data_dir} (first: {unknown[0]})")
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
            image = decode_image_file(path)
        except UnreadableImageError as error:
            raise InvalidInputError(f"pool image {path}: {error}") from error
        if self.verify_ids and image_id(image) != self.ids[index]:
            raise InvalidInputError(
                f"pool image {path} does not match its id {self.ids[index]} "
                "(the file changed after it entered the pool)"
            )
        return image

    def __getitem__(self, index: int):
        image = self.image(index)
        return (self.transform(image) if self.transform else image), int(self.labels[index])

"""Image lists for finetuning and evaluation; their transforms are in ``bilaf.features.transforms``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from bilaf.errors import InvalidInputError, MissingFileError
from bilaf.features.transforms import Transform

__all__ = ["ImageListDataset"]


class ImageListDataset(Dataset):
    """Images read from a list of files (converted to RGB), with optional integer labels."""

    def __init__(
        self,
        image_paths: Sequence[str | Path],
        labels: Sequence[int] | np.ndarray | None,
        transform: Transform,
    ) -> None:
        self.image_paths = [Path(p) for p in image_paths]
        if labels is not None:
            labels = np.asarray(labels)
            if labels.shape != (len(self.image_paths),):
                raise InvalidInputError(
                    f"labels must be one integer per image: got shape {labels.shape} for {len(self.image_paths)} images"
                )
            if not np.issubdtype(labels.dtype, np.integer):
                raise InvalidInputError(f"labels must be integer class indices, got dtype {labels.dtype}")
            if labels.size and labels.min() < 0:
                raise InvalidInputError(f"labels must be non-negative class indices, got {labels.min()}")
        self.labels = None if labels is None else labels.astype(np.int64)
        self.transform = transform
        absent = [str(p) for p in self.image_paths if not p.is_file()]
        if absent:
            raise MissingFileError(f"{len(absent)} image file(s) do not exist, e.g. {absent[:3]}")

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.image_paths[index]) as image:
            tensor = self.transform(image.convert("RGB"))
        label = -1 if self.labels is None else int(self.labels[index])
        return tensor, label

"""Image lists and the finetuning protocol's train/eval transforms (ALGORITHM.md §6).

Selection features use their own pre-processing (features package); these transforms are the ones
the supervised finetuning recipe prescribes: RandomResizedCrop + horizontal flip for training,
Resize + CenterCrop for evaluation, both bicubic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T

from bilaf.errors import InvalidInputError

__all__ = ["ImageListDataset", "eval_transform", "train_transform"]

Transform = Callable[[Image.Image], torch.Tensor]


def _check_normalisation(mean: Sequence[float], std: Sequence[float]) -> None:
    if len(mean) != 3 or len(std) != 3:
        raise InvalidInputError(f"mean and std need one value per RGB channel, got {mean} and {std}")
    if min(std) <= 0:
        raise InvalidInputError(f"std must be positive, got {std}")


def train_transform(
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    crop_scale: tuple[float, float] = (0.08, 1.0),
) -> Transform:
    """RandomResizedCrop (bicubic, aspect ratio 3/4..4/3) + horizontal flip 0.5 + normalise."""
    _check_normalisation(mean, std)
    if image_size < 8:
        raise InvalidInputError(f"image_size must be at least 8 pixels, got {image_size}")
    if not 0 < crop_scale[0] <= crop_scale[1] <= 1:
        raise InvalidInputError(f"crop_scale must satisfy 0 < low <= high <= 1, got {crop_scale}")
    return T.Compose(
        [
            T.RandomResizedCrop(image_size, scale=crop_scale, interpolation=T.InterpolationMode.BICUBIC),
            T.RandomHorizontalFlip(0.5),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )


def eval_transform(
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    crop_pct: float = 0.875,
) -> Transform:
    """Resize the short side to image_size / crop_pct (bicubic), CenterCrop image_size, normalise.

    crop_pct 0.875 is the recipe's Resize 256 + CenterCrop 224.
    """
    _check_normalisation(mean, std)
    if image_size < 8:
        raise InvalidInputError(f"image_size must be at least 8 pixels, got {image_size}")
    if not 0 < crop_pct <= 1:
        raise InvalidInputError(f"crop_pct must be in (0, 1], got {crop_pct}")
    return T.Compose(
        [
            T.Resize(round(image_size / crop_pct), interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(image_size),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )


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
            raise InvalidInputError(f"{len(absent)} image file(s) do not exist, e.g. {absent[:3]}")

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.image_paths[index]) as image:
            tensor = self.transform(image.convert("RGB"))
        label = -1 if self.labels is None else int(self.labels[index])
        return tensor, label

"""Image -> tensor transforms: one for embedding the pool, two for finetuning (docs/algorithm.md §6).

Embedding resizes to exactly ``image_size``² with no augmentation, so an item's features depend on
its pixels alone. Finetuning follows the supervised recipe: RandomResizedCrop + horizontal flip for
training, Resize + CenterCrop for evaluation. All three are bicubic and share one check of the
normalisation and the size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

from bilaf.errors import InvalidInputError

__all__ = ["Transform", "build_transform", "eval_transform", "train_transform"]

Transform = Callable[[Image.Image], torch.Tensor]


def _check_input(image_size: int, mean: Sequence[float], std: Sequence[float]) -> None:
    if len(mean) != 3 or len(std) != 3:
        raise InvalidInputError(f"mean and std need one value per RGB channel, got {mean} and {std}")
    if min(std) <= 0:
        raise InvalidInputError(f"std must be positive, got {std}")
    if image_size < 8:
        raise InvalidInputError(f"image_size must be at least 8 pixels, got {image_size}")


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
        self.scale = (1.0 / (255.0 * np.asarray(std, dtype=np.float64))).astype(np.float32)
        self.offset = (np.asarray(mean, dtype=np.float64) / np.asarray(std, dtype=np.float64)).astype(np.float32)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        pixels = np.asarray(image, dtype=np.float32) * self.scale - self.offset
        return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))


def build_transform(image_size: int, mean: Sequence[float], std: Sequence[float]) -> T.Compose:
    """PIL image (any mode) -> normalised float tensor (3, image_size, image_size), for embedding.

    Bicubic resize to exactly ``image_size``², aspect ratio not kept, no crop. Grayscale is resized
    first and then replicated to RGB (same result, a third of the work).
    """
    _check_input(image_size, mean, std)
    resize = T.Resize((image_size, image_size), interpolation=T.InterpolationMode.BICUBIC)
    return T.Compose([resize, _ToRGB(), _ToNormalizedTensor(mean, std)])


def train_transform(
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    crop_scale: tuple[float, float] = (0.08, 1.0),
) -> Transform:
    """RandomResizedCrop (bicubic, aspect ratio 3/4..4/3) + horizontal flip 0.5 + normalise."""
    _check_input(image_size, mean, std)
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
    _check_input(image_size, mean, std)
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

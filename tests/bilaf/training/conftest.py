"""Shared fixtures: a real labelled image set (scikit-learn's handwritten digits as PNG files)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DIGITS_SIZE = 32


@pytest.fixture(autouse=True)
def single_torch_thread() -> Iterator[None]:
    """Run each test on one torch thread, restoring the count afterwards.

    The models here are tiny, so one thread is as fast as two on an idle machine; on a busy one,
    OpenMP threads spin-waiting for a descheduled sibling made a 5 s finetune take 40-60 s.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass(frozen=True)
class ImageSplit:
    paths: list[Path]
    labels: np.ndarray
    pixels: np.ndarray  # raw 8x8 intensities, one row per image


@dataclass(frozen=True)
class DigitsImages:
    train: ImageSplit
    test: ImageSplit
    classes: list[str]


@pytest.fixture(scope="session")
def digits_images(tmp_path_factory: pytest.TempPathFactory) -> DigitsImages:
    """The 1,797 scikit-learn digits, upscaled to 32x32 grey PNGs; 500 train / 1,297 test."""
    digits = load_digits()
    root = tmp_path_factory.mktemp("digits")
    paths = []
    for index, image in enumerate(digits.images):
        pixels = (image * (255 / 16)).round().astype(np.uint8)
        path = root / f"digit_{index:04d}.png"
        Image.fromarray(pixels).resize((DIGITS_SIZE, DIGITS_SIZE), Image.BILINEAR).save(path)
        paths.append(path)
    order = np.random.default_rng(0).permutation(len(paths))
    train, test = order[:500], order[500:]

    def split(indices: np.ndarray) -> ImageSplit:
        return ImageSplit(
            paths=[paths[i] for i in indices],
            labels=digits.target[indices].astype(np.int64),
            pixels=digits.data[indices].astype(np.float32),
        )

    return DigitsImages(train=split(train), test=split(test), classes=[str(c) for c in range(10)])


@pytest.fixture
def small_cnn() -> Callable[[int], nn.Module]:
    """Factory of a small real CNN classifier (BatchNorm, 3 conv layers), fast on CPU."""
    return _small_cnn


def _small_cnn(num_classes: int) -> nn.Module:
    """A real (if small) convolutional classifier with BatchNorm, fast enough for unit tests."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, num_classes),
    )

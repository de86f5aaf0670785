"""Shared fixtures for the selection engine tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def single_torch_thread():
    """One intra-op thread: the small problems here run far faster on a shared, busy 2-core box."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def gaussian_mixture(
    n_items: int, n_components: int, dim: int, spread: float, seed: int, dtype: type = np.float32
) -> tuple[np.ndarray, np.ndarray]:
    """Unit-variance blobs around random means scaled by ``spread``; (features, labels)."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(n_components, dim)) * spread
    labels = rng.integers(0, n_components, size=n_items)
    return (means[labels] + rng.normal(size=(n_items, dim))).astype(dtype), labels


@pytest.fixture
def mixture():
    return gaussian_mixture

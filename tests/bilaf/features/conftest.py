"""Shared fixtures: a small real Fashion-MNIST pool and the packaged backbone (both built once)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on the network from tests

from bilaf.features import load_backbone, sync_pool  # noqa: E402


@pytest.fixture(scope="session")
def small_pool(tmp_path_factory) -> Path:
    """48 train + 16 test Fashion-MNIST items (stratified, seed 0); treat as read-only."""
    out = tmp_path_factory.mktemp("pool") / "data"
    sync_pool(out, "fashion-mnist", train_size=48, test_size=16, seed=0)
    return out


@pytest.fixture(scope="session")
def backbone():
    return load_backbone()

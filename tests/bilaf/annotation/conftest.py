"""Fixtures for the annotation tests: a tiny real project matching the Label Studio export fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on the network from tests

from annotation_project import BATCH_SIZE, item_ids, write_project  # noqa: E402


@pytest.fixture
def project(tmp_path) -> Path:
    write_project(tmp_path / "project")
    return tmp_path / "project"


@pytest.fixture(scope="session")
def pool_ids() -> list[str]:
    return item_ids(BATCH_SIZE + 2)

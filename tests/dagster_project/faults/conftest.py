"""A small real project for fault injection: a copy of Fashion-MNIST's files as its source (so the
source can be touched), git + DVC, its own Dagster home; materialized once by the first test."""

import copy
import shutil
from pathlib import Path

import pytest
from pipeline.conftest import TINY_PARAMS, make_project, project_environment

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="module")
def faulty(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults")
    source = root / "source"
    source.mkdir()
    for file in FASHION_MNIST.glob("*.gz"):
        shutil.copy(file, source / file.name)
    params = copy.deepcopy(TINY_PARAMS)
    params["data"].update(root=str(source), train_size=200, test_size=60)
    params["core"]["n_cores"] = 10
    params["boundary"]["budget"] = 24
    make_project(root, params)
    with project_environment(root):
        yield root

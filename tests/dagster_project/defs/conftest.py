"""Unit tests of the Dagster layer: a params-only project folder (the tiny pipeline's parameters,
no pool, no outputs) and a throwaway Dagster instance per test; nothing here runs a stage."""

from pathlib import Path

import dagster as dg
import pytest
from pipeline.conftest import TINY_PARAMS, write_params


@pytest.fixture
def project_dir(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    write_params(root, TINY_PARAMS)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return root


@pytest.fixture
def instance():
    """A persistent (SQLite, temporary) instance: sensor and schedule contexts refuse ephemeral ones."""
    with dg.instance_for_test() as test_instance:
        yield test_instance


@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory) -> str:
    """One embedded MLflow store shared by the tests that only need one to exist (creating its
    schema takes seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"

"""A tiny real project (Fashion-MNIST subset, small images, one finetuning epoch) shared by the
pipeline tests: git + DVC initialised, the repository's dvc.yaml, its own Dagster home."""

import contextlib
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent

TINY_PARAMS = {
    "data": {
        "source": "fashion-mnist",
        "root": None,
        "train_size": 300,
        "test_size": 100,
        "seed": 0,
        "on_unreadable": "skip",
    },
    "features": {"backbone": "tf_efficientnet_lite0", "weights": "packaged", "image_size": 32, "batch_size": 100},
    "core": {"method": "activeft", "n_cores": 10, "seed": 0},
    "denoise": {"n_neighbors": 10, "ring_fraction": 0.1, "removal_ratio": 0.1, "variant": "default"},
    "boundary": {"budget": 40, "penalty": 1.1},
    "later_rounds": {"method": "bilaf", "n_cores": 0},
    "annotation": {"labels": "ground-truth"},
    "finetune": {"epochs": 1, "image_size": 32, "batch_size": 20, "lr": 0.01, "seed": 0},
    "evaluation": {"knn_k": 5},
}


def run(command: list[str], cwd: Path, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    completed = subprocess.run(command, cwd=cwd, env=env or os.environ.copy(), capture_output=True, text=True)
    if check and completed.returncode != 0:
        raise AssertionError(
            f"{' '.join(command)} failed ({completed.returncode}):\n"
            f"{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}"
        )
    return completed


def free_port() -> int:
    """A loopback port nothing listens on now (for servers the tests start)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_params(root: Path, params: dict) -> None:
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory) -> Path:
    return make_project(tmp_path_factory.mktemp("project"), TINY_PARAMS)


def make_project(root: Path, params: dict) -> Path:
    """A git + DVC project with the repository's dvc.yaml; its code dependencies (bilaf/) are a
    link to the package under test."""
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    shutil.copy(REPO / ".dvcignore", root / ".dvcignore")
    (root / "bilaf").symlink_to(REPO / "bilaf")
    write_params(root, params)
    (root / ".gitignore").write_text(
        "/data/\n/labels/\n/rounds/\n/artifacts/\n/.dagster_home/\n/mlflow/\n/.cache/\n/.dvc-storage/\n/.bilaf.lock\n"
    )
    run(["git", "init", "-q"], root)
    run(["git", "config", "user.email", "test@example.com"], root)
    run(["git", "config", "user.name", "test"], root)
    run([str(BIN / "dvc"), "init", "-q"], root)
    run([str(BIN / "dvc"), "config", "core.analytics", "false"], root)
    run([str(BIN / "dvc"), "remote", "add", "-d", "local", str(root / ".dvc-storage")], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "tiny project"], root)
    return root


@pytest.fixture(scope="session")
def project_env(tiny_project) -> dict:
    """Environment for subprocesses working on the tiny project (and set in this process too)."""
    env = {
        "BILAF_PROJECT_DIR": str(tiny_project),
        "DAGSTER_HOME": str(tiny_project / ".dagster_home"),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "HF_HUB_OFFLINE": "1",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    (tiny_project / ".dagster_home").mkdir(exist_ok=True)
    with project_environment(tiny_project, PATH=env["PATH"]):
        yield {**os.environ, **env}


@contextlib.contextmanager
def project_environment(root: Path, **extra: str) -> Iterator[None]:
    """This process's environment set for one project (its Dagster home, offline, no telemetry,
    the embedded MLflow store), restored afterwards."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in {
            "DAGSTER_HOME": str(root / ".dagster_home"),
            "BILAF_PROJECT_DIR": str(root),
            "HF_HUB_OFFLINE": "1",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            **extra,
        }.items():
            patch.setenv(key, value)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield

"""A fresh clone of this repository (the default project) for the benchmarks that run `bilaf run` as
a new user would: this checkout's .venv and .venv-dvc linked in, the clone's own code on PYTHONPATH,
its own Dagster home, no team services."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def fresh_clone(ref: str = "HEAD") -> Iterator[tuple[Path, dict[str, str]]]:
    """(the clone's folder, the environment to run its `bilaf` in); removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="bilaf-clone-") as scratch:
        project = Path(scratch) / "project"
        subprocess.run(["git", "clone", "-q", str(REPO), str(project)], check=True)
        subprocess.run(["git", "-C", str(project), "checkout", "-q", ref], check=True)
        for venv in (".venv", ".venv-dvc"):
            (project / venv).symlink_to(REPO / venv)
        env = {
            **os.environ,
            "DAGSTER_HOME": str(project / ".dagster_home"),
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DO_NOT_TRACK": "1",
            "OMP_WAIT_POLICY": "PASSIVE",
            "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": str(project),  # the clone's code, not this checkout's editable install
            "PATH": f"{project / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        for name in ("MLFLOW_TRACKING_URI", "BILAF_DAGSTER_URL", "BILAF_PROJECT_DIR"):
            env.pop(name, None)
        setup = "from dagster_project.defs.planning import project_dagster_home; project_dagster_home('.')"
        subprocess.run([sys.executable, "-c", setup], cwd=project, env=env, check=True)
        yield project, env

"""Resources: the project folder and DVC (versioning); MLflow tracking is in `defs.tracking`."""

import os
from pathlib import Path

import dagster as dg

from bilaf import dvc
from bilaf.config import Params, load_params
from bilaf.stages import ProjectPaths

PROJECT_DIR_ENV = "BILAF_PROJECT_DIR"


def default_project_dir() -> str:
    """The folder holding params.yaml, data/ and artifacts/: $BILAF_PROJECT_DIR or the cwd."""
    return os.environ.get(PROJECT_DIR_ENV) or os.getcwd()


class ProjectResource(dg.ConfigurableResource):
    """The project folder every stage reads and writes."""

    root: str

    @property
    def paths(self) -> ProjectPaths:
        return ProjectPaths(Path(self.root).resolve())

    def params(self) -> Params:
        return load_params(self.paths.params)


class DvcResource(dg.ConfigurableResource):
    """Records each artifact in DVC (dvc.lock, data.dvc, labels.dvc) and reads back its hash.

    With ``push`` (the default) every recorded version is also pushed to the project's default
    remote, when one is configured (a local folder, `.dvc-storage/`, in this repository): a
    `dvc gc` of the workspace cache then cannot delete what an MLflow run points to.
    """

    root: str
    push: bool = True

    def track_source(self, target: str) -> str:
        """`dvc add TARGET` (a no-op when unchanged) for a source folder; returns its DVC hash."""
        recorded = dvc.track(Path(self.root), target)
        if recorded is None:
            raise RuntimeError(f"{self.root} is not a DVC project (no .dvc/): run `dvc init` there")
        self._maybe_push(f"{target}.dvc")
        return recorded

    def commit_stage(self, stage: str) -> str:
        """Record the stage's current deps, params and outs in dvc.lock; returns the output's hash."""
        dvc.run_dvc(Path(self.root), "commit", "-q", "-f", stage)
        self._maybe_push(stage)
        return self.stage_output_hash(stage)

    def stage_output_hash(self, stage: str) -> str:
        return dvc.stage_output_hash(Path(self.root), stage)

    def dependency_hashes(self, stage: str) -> dict[str, str]:
        return dvc.stage_dependency_hashes(Path(self.root), stage)

    def _maybe_push(self, target: str) -> None:
        if self.push and dvc.default_remote(Path(self.root)) is not None:
            dvc.run_dvc(Path(self.root), "push", "-q", target)

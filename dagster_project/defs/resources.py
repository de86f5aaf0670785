"""Resources: the project folder and DVC (versioning); MLflow tracking is in `defs.tracking`."""

import json
import os
from pathlib import Path

import dagster as dg

from bilaf.config import Params, load_params
from bilaf.errors import BilafError
from bilaf.stages.paths import ProjectPaths
from dagster_project import dvc

PROJECT_DIR_ENV = "BILAF_PROJECT_DIR"


def default_project_dir() -> str:
    """The folder holding params.yaml, data/ and artifacts/: $BILAF_PROJECT_DIR or the cwd."""
    return os.environ.get(PROJECT_DIR_ENV) or os.getcwd()


class RemoteUnavailableError(BilafError):
    """The DVC remote refused a push: the version is recorded locally, not yet stored remotely."""


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

    With ``push`` (the default) every recorded version is also pushed to the project's remote
    (`dagster_project.dvc.project_remote`: a local folder, `.dvc-storage/`, in this repository; the object
    store in a team's deployment): a `dvc gc` of the workspace cache then cannot delete what an
    MLflow run points to. A push that fails fails the step with the remote named, and what it did
    not push is pushed first by the next one (`push_pending`).
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
        if self.push:
            push_pending(Path(self.root), target)


def _pending_file(root: Path) -> Path:
    return root / ".dvc" / "tmp" / "bilaf-unpushed.json"


def push_pending(root: Path, *targets: str) -> list[str]:
    """Push ``targets`` and whatever an earlier push left unpushed to the project's DVC remote;
    returns what was pushed. A failure is recorded, then raised naming the remote."""
    pending_file = _pending_file(root)
    pending = json.loads(pending_file.read_text()) if pending_file.is_file() else []
    queue = list(dict.fromkeys([*pending, *targets]))
    remote = dvc.project_remote(root)
    if remote is None or not queue:
        return []
    pushed = []
    try:
        for target in queue:
            dvc.push(root, remote[0], target)
            pushed.append(target)
    except RuntimeError as error:
        pending_file.parent.mkdir(parents=True, exist_ok=True)
        pending_file.write_text(json.dumps([t for t in queue if t not in pushed]))
        raise RemoteUnavailableError(
            f"DVC push of {queue[len(pushed)]} to remote {remote[0]!r} ({remote[2] or remote[1]}) failed; the next "
            f"run pushes it. DVC said: {str(error).splitlines()[-1]}"
        ) from None
    pending_file.unlink(missing_ok=True)
    return pushed

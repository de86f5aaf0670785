"""Resources: the project folder, DVC (versioning) and MLflow (tracking)."""

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import dagster as dg
import yaml

from dagster_project import dvc
from dagster_project.config import Params, load_params
from dagster_project.stages import ProjectPaths

PROJECT_DIR_ENV = "BILAF_PROJECT_DIR"
EXPERIMENT_NAME = "bilaf"


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
    """Records each artifact in DVC (dvc.lock, data.dvc, labels.dvc) and reads back its hash."""

    root: str
    push: bool = False

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

    def _lock(self) -> dict[str, Any]:
        return yaml.safe_load((Path(self.root) / "dvc.lock").read_text())["stages"]

    def stage_output_hash(self, stage: str) -> str:
        return dvc.md5_of(self._lock()[stage]["outs"][0])

    def dependency_hashes(self, stage: str) -> dict[str, str]:
        return {dep["path"]: dvc.md5_of(dep) for dep in self._lock()[stage].get("deps", [])}

    def _maybe_push(self, target: str) -> None:
        if self.push:
            dvc.run_dvc(Path(self.root), "push", "-q", target)


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


class MlflowResource(dg.ConfigurableResource):
    """One parent MLflow run per Dagster run, one nested run per asset materialization.

    Defaults to a local store under the project's `mlflow/` folder (SQLite + artifacts beside
    it); MLFLOW_TRACKING_URI points it at a real `mlflow server` instead.
    """

    root: str
    tracking_uri: str | None = None

    def resolved_tracking_uri(self) -> str:
        return (self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
                or f"sqlite:///{Path(self.root).resolve() / 'mlflow' / 'mlflow.db'}")

    def _client(self):
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        import mlflow

        return mlflow.MlflowClient(tracking_uri=self.resolved_tracking_uri())

    def _experiment_id(self, client) -> str:
        """The experiment, created on first use; in the embedded store, its artifact root is
        resolved from the project folder now, so a copied or moved project writes into itself."""
        embedded = self.resolved_tracking_uri().startswith("sqlite:")
        location = (Path(self.root).resolve() / "mlflow" / "artifacts").as_uri() if embedded else None
        experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
        if experiment is None:
            # MLflow 3 opens an experiment without this tag in its GenAI view; ours trains models.
            return client.create_experiment(EXPERIMENT_NAME, artifact_location=location,
                                            tags={"mlflow.experimentKind": "custom_model_development"})
        if embedded and experiment.artifact_location != location:
            relocate_artifact_root(Path(self.resolved_tracking_uri().removeprefix("sqlite:///")),
                                   experiment.artifact_location, location)
        return experiment.experiment_id

    def _parent_run_id(self, client, experiment_id: str, dagster_run_id: str, job_name: str) -> str:
        existing = client.search_runs([experiment_id], f"tags.dagster_run_id = '{dagster_run_id}' "
                                      "and tags.bilaf_level = 'dagster_run'", max_results=1)
        if existing:
            return existing[0].info.run_id
        run = client.create_run(experiment_id, run_name=f"dagster-{dagster_run_id[:8]}",
                                tags={"dagster_run_id": dagster_run_id, "bilaf_level": "dagster_run",
                                      "dagster_job": job_name})
        return run.info.run_id

    @contextlib.contextmanager
    def asset_run(self, context: dg.AssetExecutionContext, asset_name: str,
                  tags: Mapping[str, str]) -> Iterator["AssetRunLogger"]:
        """A nested MLflow run for one materialization; marked FAILED if the body raises."""
        client = self._client()
        experiment_id = self._experiment_id(client)
        parent_id = self._parent_run_id(client, experiment_id, context.run.run_id, context.run.job_name)
        run = client.create_run(
            experiment_id, run_name=asset_name,
            tags={"mlflow.parentRunId": parent_id, "dagster_run_id": context.run.run_id,
                  "asset_key": asset_name, "bilaf_level": "asset", **tags},
        )
        logger = AssetRunLogger(client, run.info.run_id)
        try:
            yield logger
        except BaseException:
            client.set_terminated(run.info.run_id, "FAILED")
            client.set_terminated(parent_id, "FAILED")
            raise
        client.set_terminated(run.info.run_id, "FINISHED")
        client.set_terminated(parent_id, "FINISHED")


# Where MLflow 3.17's SQL store keeps artifact locations (the tracking API cannot change them).
_ARTIFACT_COLUMNS = (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                     ("logged_models", "artifact_location"), ("model_versions", "source"),
                     ("model_versions", "storage_location"))


def relocate_artifact_root(database: Path, old: str, new: str) -> None:
    """Point every artifact location under ``old`` at ``new`` in an embedded (SQLite) MLflow store.

    MLflow resolves local artifact roots to absolute paths when it creates an experiment; after the
    project folder was copied or moved they still name the original folder, and new runs would
    write there. Rewriting the prefix makes the store name its own folder again (the artifacts
    moved with it). MLflow has no API for this, hence the SQL, kept to the pinned version's schema.
    """
    import sqlite3

    with sqlite3.connect(database) as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        for table, column in _ARTIFACT_COLUMNS:
            if table in tables:
                connection.execute(f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                                   f"WHERE substr({column}, 1, ?) = ?", (new, len(old) + 1, len(old), old))


class AssetRunLogger:
    """Thin helper over one MLflow run id (explicit client calls, no global fluent state)."""

    def __init__(self, client, run_id: str):
        self.client = client
        self.run_id = run_id

    def log_params(self, params: Mapping[str, Any], prefix: str = "") -> None:
        for key, value in params.items():
            self.client.log_param(self.run_id, f"{prefix}{key}", "null" if value is None else value)

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        for key, value in metrics.items():
            self.client.log_metric(self.run_id, key, float(value))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_pytorch_model(self, model_dir: Path) -> None:
        """Log a saved finetuned classifier with mlflow.pytorch (input example, explicit requirements)."""
        import mlflow
        import numpy as np
        import torch

        from dagster_project.training import load_finetuned

        model, metadata = load_finetuned(model_dir)
        example = np.zeros((1, 3, metadata.image_size, metadata.image_size), dtype=np.float32)
        requirements = [f"torch=={torch.__version__.split('+')[0]}", f"timm=={_version('timm')}",
                        f"mlflow=={mlflow.__version__}", f"numpy=={np.__version__}"]
        # mlflow.pytorch logs through the fluent API, whose tracking URI is process-wide and exported
        # to MLFLOW_TRACKING_URI: set it for this call only, so nothing started later (another project's
        # run, a subprocess) inherits this project's store.
        previous_env = os.environ.get("MLFLOW_TRACKING_URI")
        previous_uri = mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(self.client.tracking_uri)
        try:
            with mlflow.start_run(run_id=self.run_id):
                mlflow.pytorch.log_model(model, name="model", input_example=example, pip_requirements=requirements,
                                         metadata={"classes": metadata.classes, "backbone": metadata.backbone})
        finally:
            mlflow.set_tracking_uri(previous_uri)
            if previous_env is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = previous_env

    def set_tags(self, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, value)

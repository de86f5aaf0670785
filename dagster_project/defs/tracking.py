"""MLflow tracking: one parent MLflow run per Dagster run, one nested run per materialization.

Each nested run records what an auditor needs to trust the artifact it describes: the files of the
output with their sha256 (a logged manifest whose own hash is a tag), the DVC hashes of the output
and its inputs, every params section of the lineage, the code version, the git commit and any
uncommitted code diff, the pool as an MLflow dataset input, and links both ways between the Dagster
run and the MLflow run. A failed step fails its MLflow run; the parent run ends when the Dagster run
ends (`finish_dagster_run`), and a run whose process was killed is closed as FAILED in both stores
by the next run (`close_abandoned_runs`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import dagster as dg

from dagster_project.cluster import process_alive

EXPERIMENT_NAME = "bilaf"
REGISTERED_MODEL = "bilaf-finetuned"
OUTPUT_MANIFEST = "output_manifest.json"
LOGGED_LIMIT = 20 * 2**20  # files above this size are hashed but not copied to MLflow (DVC keeps them)
PID_TAG, HOST_TAG = "bilaf/pid", "bilaf/host"
MLFLOW_UI_URL, DAGSTER_UI_URL = "http://127.0.0.1:5000", "http://127.0.0.1:3000"  # `make mlflow-ui`, `make ui`
# MLflow 3.17's UI picks its view from this query parameter, else from the browser's local storage
# (GenAI by default); the experiment's `mlflow.experimentKind` tag does not choose it.
TRAINING_VIEW = "?workflowType=machine_learning"
DESCRIPTION_TAG = "mlflow.note.content"  # a run's description, rendered as Markdown
DAGSTER_URL_ENV = "BILAF_DAGSTER_URL"  # the team's Dagster webserver (written by `make team-up`)
# Where MLflow 3.17's SQL store keeps artifact locations (the tracking API cannot change them).
_ARTIFACT_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("logged_models", "artifact_location"),
    ("model_versions", "source"),
    ("model_versions", "storage_location"),
)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def output_manifest(output: Path) -> dict[str, dict[str, Any]]:
    """relative path -> {sha256, size} of every file of a stage output (a file or a folder)."""
    output = Path(output)
    files = [output] if output.is_file() else sorted(p for p in output.rglob("*") if p.is_file())
    return {
        (file.name if file == output else file.relative_to(output).as_posix()): {
            "sha256": sha256_file(file),
            "size": file.stat().st_size,
        }
        for file in files
    }


def project_tracking_uri(root: Path, explicit: str | None = None) -> str:
    """Where a project's runs are recorded: ``explicit``, else $MLFLOW_TRACKING_URI (a real
    `mlflow server`), else the embedded SQLite store in the project's `mlflow/` folder."""
    return (
        explicit
        or os.environ.get("MLFLOW_TRACKING_URI")
        or f"sqlite:///{Path(root).resolve() / 'mlflow' / 'mlflow.db'}"
    )


def embedded_database(uri: str) -> Path | None:
    """The SQLite file of an embedded store's URI; None for a server."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def tracking_client(uri: str):
    """An MLflow client of ``uri`` (telemetry off, as everywhere in this project; no progress bars
    redrawn into logs and answers for each artifact it reads)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow

    return mlflow.MlflowClient(tracking_uri=uri)


def canonical_sha256(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class MlflowResource(dg.ConfigurableResource):
    """The project's MLflow store: by default SQLite + artifacts under its `mlflow/` folder;
    MLFLOW_TRACKING_URI points it at a real `mlflow server` instead. Links point to ``ui_url``
    (default: that server, else `make mlflow-ui`) and ``dagster_ui_url`` (default:
    $BILAF_DAGSTER_URL, the team's webserver, else `make ui`)."""

    root: str
    tracking_uri: str | None = None
    ui_url: str | None = None
    dagster_ui_url: str | None = None

    def resolved_tracking_uri(self) -> str:
        return project_tracking_uri(Path(self.root), self.tracking_uri)

    def client(self):
        return tracking_client(self.resolved_tracking_uri())

    def experiment_id(self, client) -> str:
        """The experiment, created on first use; in the embedded store, its artifact root is
        resolved from the project folder now, so a copied or moved project writes into itself."""
        database = embedded_database(self.resolved_tracking_uri())
        location = (Path(self.root).resolve() / "mlflow" / "artifacts").as_uri() if database else None
        experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
        if experiment is None:
            # The kind MLflow records (ours trains models); its UI's view comes from TRAINING_VIEW.
            return client.create_experiment(
                EXPERIMENT_NAME, artifact_location=location, tags={"mlflow.experimentKind": "custom_model_development"}
            )
        if database and experiment.artifact_location != location:
            relocate_artifact_root(database, experiment.artifact_location, location)
        return experiment.experiment_id

    def served_mlflow_ui(self) -> str | None:
        """The MLflow UI that already serves this store (``ui_url``, or the tracking server's own
        address); None for the embedded store, which `make mlflow-ui` serves on demand."""
        uri = self.resolved_tracking_uri()
        served = self.ui_url or (uri if uri.startswith(("http://", "https://")) else None)
        return served.rstrip("/") if served else None

    def served_dagster_ui(self) -> str | None:
        """The Dagster webserver that already runs (``dagster_ui_url`` or $BILAF_DAGSTER_URL, the
        team's); None when `make ui` starts one on demand."""
        served = self.dagster_ui_url or os.environ.get(DAGSTER_URL_ENV)
        return served.rstrip("/") if served else None

    def experiment_url(self, experiment_id: str) -> str:
        return f"{self.served_mlflow_ui() or MLFLOW_UI_URL}/#/experiments/{experiment_id}{TRAINING_VIEW}"

    def run_url(self, experiment_id: str, run_id: str) -> str:
        return f"{self.served_mlflow_ui() or MLFLOW_UI_URL}/#/experiments/{experiment_id}/runs/{run_id}{TRAINING_VIEW}"

    def dagster_run_url(self, dagster_run_id: str) -> str:
        return f"{self.served_dagster_ui() or DAGSTER_UI_URL}/runs/{dagster_run_id}"

    def where_to_look(self, experiment_id: str) -> str:
        """Where a person opens the UIs: the addresses that serve them (a team's), else the make
        targets that start them; MLflow's with the experiment's runs in the training view."""
        runs = self.experiment_url(experiment_id)
        mlflow_ui = runs if self.served_mlflow_ui() else f"`make mlflow-ui`, then {runs}"
        return f"Dagster UI: {self.served_dagster_ui() or '`make ui`'}; MLflow: {mlflow_ui}."

    def _dagster_link(self, dagster_run_id: str, asset_name: str | None = None) -> str:
        """The run's description (Markdown in MLflow's UI): a link to the Dagster run."""
        what = f"`{asset_name}`, materialized by " if asset_name else ""
        return f"{what}Dagster run [{dagster_run_id[:8]}]({self.dagster_run_url(dagster_run_id)})"

    def _parent_run_id(self, client, experiment_id: str, context) -> str:
        dagster_run_id = context.run.run_id
        existing = client.search_runs(
            [experiment_id],
            f"tags.dagster_run_id = '{dagster_run_id}' and tags.bilaf_level = 'dagster_run'",
            max_results=1,
        )
        if existing:
            return existing[0].info.run_id
        run = client.create_run(
            experiment_id,
            run_name=f"dagster-{dagster_run_id[:8]}",
            tags={
                "dagster_run_id": dagster_run_id,
                "bilaf_level": "dagster_run",
                "dagster_job": context.run.job_name,
                "dagster_run_url": self.dagster_run_url(dagster_run_id),
                DESCRIPTION_TAG: self._dagster_link(dagster_run_id),
                **{key: value for key, value in context.run.tags.items() if key.startswith("bilaf/")},
            },
        )
        return run.info.run_id

    @contextlib.contextmanager
    def asset_run(self, context, asset_name: str, tags: Mapping[str, str]) -> Iterator[AssetRunLogger]:
        """A nested MLflow run for one materialization (or observation); FAILED if the body raises.
        The parent run is left open: it ends with the Dagster run."""
        client = self.client()
        experiment_id = self.experiment_id(client)
        parent_id = self._parent_run_id(client, experiment_id, context)
        run = client.create_run(
            experiment_id,
            run_name=asset_name,
            tags={
                "mlflow.parentRunId": parent_id,
                "dagster_run_id": context.run.run_id,
                "dagster_run_url": self.dagster_run_url(context.run.run_id),
                DESCRIPTION_TAG: self._dagster_link(context.run.run_id, asset_name),
                "asset_key": asset_name,
                "bilaf_level": "asset",
                **tags,
            },
        )
        logger = AssetRunLogger(client, run.info.run_id, self.run_url(experiment_id, run.info.run_id))
        try:
            yield logger
        except BaseException:
            client.set_terminated(run.info.run_id, "FAILED")
            raise
        logger.flush()
        client.set_terminated(run.info.run_id, "FINISHED")

    def finish_dagster_run(self, dagster_run_id: str, succeeded: bool) -> None:
        """End the parent run of a Dagster run, and any of its runs still open (a killed step's)."""
        client = self.client()
        experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
        if experiment is None:
            return
        for run in client.search_runs(
            [experiment.experiment_id], f"tags.dagster_run_id = '{dagster_run_id}' and attributes.status = 'RUNNING'"
        ):
            parent = run.data.tags.get("bilaf_level") == "dagster_run"
            client.set_terminated(run.info.run_id, "FINISHED" if succeeded and parent else "FAILED")


def close_abandoned_runs(instance: dg.DagsterInstance, mlflow: MlflowResource) -> list[str]:
    """Close what earlier runs left open; returns one line per thing closed or left open.

    A Dagster run of `bilaf run` still STARTED whose process is gone (killed) is marked FAILED, its
    concurrency slot freed and its MLflow runs FAILED. An MLflow parent run still RUNNING whose Dagster
    run has ended (the store was unreachable when it ended) is ended with that run's outcome. Runs
    launched by the Dagster daemon are watched by its run monitoring instead (see the instance
    settings). An unreachable MLflow store is reported, not raised: this is housekeeping, and the next
    run does it again."""
    from mlflow.exceptions import MlflowException

    lines = []
    for record in instance.get_run_records(
        filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING])
    ):
        run = record.dagster_run
        pid, host = run.tags.get(PID_TAG), run.tags.get(HOST_TAG)
        if pid is None or host != socket.gethostname() or process_alive(int(pid)):
            continue
        instance.report_run_failed(run, f"the process of this run (pid {pid}) is gone: it was killed")
        # Its step still holds the project's concurrency slot: without this, every later step waits forever.
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        lines.append(f"Run {run.run_id} was killed before it finished: marked FAILED in Dagster.")
    try:
        for dagster_run_id, succeeded in _ended_runs_with_open_parents(instance, mlflow):
            mlflow.finish_dagster_run(dagster_run_id, succeeded)
            lines.append(
                f"Run {dagster_run_id}: its MLflow runs were still open, now ended "
                f"{'FINISHED' if succeeded else 'FAILED'} as the Dagster run did."
            )
    except MlflowException as error:
        lines.append(
            f"MLflow store unreachable ({str(error).splitlines()[0]}): runs it holds open stay open "
            "until a later run ends them."
        )
    return lines


def _ended_runs_with_open_parents(instance: dg.DagsterInstance, mlflow: MlflowResource) -> list[tuple[str, bool]]:
    """(Dagster run id, succeeded) of this instance's ended runs whose MLflow parent run is RUNNING."""
    client = mlflow.client()
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    if experiment is None:
        return []
    ended = []
    for parent in client.search_runs(
        [experiment.experiment_id], "tags.bilaf_level = 'dagster_run' and attributes.status = 'RUNNING'"
    ):
        dagster_run = instance.get_run_by_id(parent.data.tags["dagster_run_id"])
        if dagster_run is not None and dagster_run.is_finished:  # another project's store entries: None
            ended.append((dagster_run.run_id, dagster_run.status == dg.DagsterRunStatus.SUCCESS))
    return ended

    return True


def process_tags() -> dict[str, str]:
    """Run tags that let a later run tell whether this process still runs."""
    return {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}


class AssetRunLogger:
    """One MLflow run: params and metrics are sent in one batch at the end; outputs are logged
    with their manifest of sha256 hashes."""

    def __init__(self, client, run_id: str, url: str):
        self.client = client
        self.run_id = run_id
        self.url = url
        self._params: dict[str, str] = {}
        self._metrics: dict[str, float] = {}
        self._tags: dict[str, str] = {}

    def log_params(self, params: Mapping[str, Any], prefix: str = "") -> None:
        self._params.update(
            {
                f"{prefix}{key}": json.dumps(value) if not isinstance(value, str) else value
                for key, value in params.items()
            }
        )

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        self._metrics.update({key: float(value) for key, value in metrics.items()})

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self._tags.update({key: str(value) for key, value in tags.items()})

    def flush(self) -> None:
        """Send the collected params, metrics and tags in one request."""
        import time

        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        self.client.log_batch(
            self.run_id,
            metrics=[Metric(key, value, now, 0) for key, value in self._metrics.items()],
            params=[Param(key, value) for key, value in self._params.items()],
            tags=[RunTag(key, value) for key, value in self._tags.items()],
        )
        self._params, self._metrics, self._tags = {}, {}, {}

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_output(self, output: Path) -> dict[str, dict[str, Any]]:
        """Log a stage output (each file up to ``LOGGED_LIMIT``) under its name, with the manifest of
        every file's sha256; the manifest's own hash becomes the tag `output_manifest_sha256`."""
        import tempfile

        manifest = output_manifest(output)
        base = Path(output)
        for relative, entry in manifest.items():
            file = base if base.is_file() else base / relative
            entry["logged"] = entry["size"] <= LOGGED_LIMIT
            if entry["logged"]:
                folder = Path(base.name, relative).parent.as_posix() if base.is_dir() else None
                self.client.log_artifact(self.run_id, str(file), folder)
        with tempfile.TemporaryDirectory() as scratch:
            listing = Path(scratch) / OUTPUT_MANIFEST
            listing.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
            self.client.log_artifact(self.run_id, str(listing))
        self.set_tags({"output_manifest_sha256": canonical_sha256(manifest), "output_name": base.name})
        return manifest

    def log_pool(self, manifest, version: str, data_dir: Path) -> None:
        """The pool as this run's MLflow dataset input: its folder, digest = the pool version, the
        manifest's schema declared (``label`` may be missing: a folder source has no labels) and its
        row count as an input tag."""
        import pandas as pd
        from mlflow.data.dataset_source_registry import get_dataset_source_from_json
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.types import ColSpec, DataType, Schema

        # MLflow registers its local-folder source twice ("" and "file" schemes): resolving a path
        # string warns that it "can be interpreted in multiple ways". Name the source type instead.
        source = get_dataset_source_from_json(json.dumps({"uri": str(data_dir)}), source_type="local")
        columns = []
        for name in manifest.columns:
            integer = pd.api.types.is_integer_dtype(manifest[name])
            nullable = integer and isinstance(manifest[name].dtype, pd.api.extensions.ExtensionDtype)  # Int64
            columns.append(ColSpec(DataType.long if integer else DataType.string, name, required=not nullable))
        dataset = MetaDataset(source, name="pool", digest=version, schema=Schema(columns))
        tags = [InputTag("mlflow.data.context", "pool"), InputTag("rows", str(len(manifest)))]
        self.client.log_inputs(self.run_id, datasets=[DatasetInput(dataset._to_mlflow_entity(), tags=tags)])

    def log_pytorch_model(self, model_dir: Path, round_number: int | None) -> str:
        """Log a saved finetuned classifier with mlflow.pytorch (input example, explicit requirements)
        and register it as a version of `bilaf-finetuned` tagged with its round; returns the version."""
        import numpy as np
        import torch

        import mlflow
        from bilaf.training import load_finetuned

        model, metadata = load_finetuned(model_dir)
        # Two rows: with one, the torch.export that MLflow runs on the example fixes the batch
        # dimension at 1 and logs a warning saying so.
        example = np.zeros((2, 3, metadata.image_size, metadata.image_size), dtype=np.float32)
        requirements = [
            f"torch=={torch.__version__.split('+')[0]}",
            f"timm=={_version('timm')}",
            f"mlflow=={mlflow.__version__}",
            f"numpy=={np.__version__}",
        ]
        # mlflow.pytorch logs through the fluent API, whose tracking URI is process-wide and exported
        # to MLFLOW_TRACKING_URI: set it for this call only, so nothing started later (another project's
        # run, a subprocess) inherits this project's store. Unset before means unset after: restoring
        # get_tracking_uri()'s default would pin the process to ./mlflow.db in the working directory.
        previous_uri = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
        previous_env = os.environ.get("MLFLOW_TRACKING_URI")
        mlflow.set_tracking_uri(self.client.tracking_uri)
        try:
            with mlflow.start_run(run_id=self.run_id):
                info = mlflow.pytorch.log_model(
                    model,
                    name="model",
                    input_example=example,
                    pip_requirements=requirements,
                    metadata={"classes": metadata.classes, "backbone": metadata.backbone},
                )
            # The registry resolves the logged model through the fluent store too: inside this window.
            version = mlflow.register_model(
                info.model_uri, REGISTERED_MODEL, tags={"round": str(round_number)} if round_number else None
            )
        finally:
            mlflow.set_tracking_uri(previous_uri)  # None unsets it
            # set_tracking_uri exports its value: the variable must be as it was, or every MlflowResource
            # of this process (another project's) would follow it to this store.
            if previous_env is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = previous_env
        return version.version


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


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
                connection.execute(
                    f"UPDATE {table} SET {column} = ? || substr({column}, ?) WHERE substr({column}, 1, ?) = ?",
                    (new, len(old) + 1, len(old), old),
                )

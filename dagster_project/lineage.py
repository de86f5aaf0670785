"""Audit one selected image: why it was chosen, from which data, backbone, parameters, code and run."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from dagster_project import artifacts, rounds
from dagster_project.stages import ProjectPaths


def explain_selection(item_id: str, root: Path, tracking_uri: str | None = None) -> dict[str, Any]:
    """Everything recorded about why `item_id` was picked: in which rounds (frozen ones from the
    rounds ledger, the open one from the current selection), from which data, backbone,
    parameters, code and run.

    Raises ValueError when no round picked the id (naming how many rounds there are).
    """
    paths = ProjectPaths(Path(root).resolve())
    selection_file = paths.output("boundary_set") / "selection.csv"
    if not selection_file.is_file():
        raise ValueError(f"no selection yet ({selection_file} is missing): run the pipeline first")
    selections = [selection_file, *sorted((paths.root / rounds.ROUNDS_DIR).glob("round-*/selection.csv"))]
    picks = pd.concat([pd.read_csv(file, dtype={"id": str}, keep_default_na=False) for file in selections])
    picks = picks[picks["id"] == item_id].drop_duplicates().sort_values("round")
    if picks.empty:
        raise ValueError(f"{item_id} was not picked in any of the {len(selections)} selections so far "
                         f"(the open round's {selection_file} and the frozen rounds in {rounds.ROUNDS_DIR}/)")
    lock = yaml.safe_load((paths.root / "dvc.lock").read_text())["stages"]
    boundary_hash = lock["boundary_set"]["outs"][0]["md5"]
    embeddings_meta = artifacts.read_json(paths.output("embeddings") / "meta.json")
    report: dict[str, Any] = {
        "id": item_id,
        "why": picks.to_dict("records"),
        "data_version": yaml.safe_load((paths.root / "data.dvc").read_text())["outs"][0]["md5"],
        "backbone": {key: embeddings_meta.get(key) for key in ("backbone", "weights_sha256", "image_size",
                                                                "mean", "std")},
        "selection_version": boundary_hash,
        "parameters": {section: values for section, values in lock["boundary_set"]["params"]["params.yaml"].items()},
    }
    report["run"] = _mlflow_run(paths, boundary_hash, tracking_uri)
    return report


def _mlflow_run(paths: ProjectPaths, boundary_hash: str, tracking_uri: str | None) -> dict[str, Any] | None:
    """The MLflow run that materialized this exact selection (None when it was made by `dvc repro`)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{paths.root / 'mlflow' / 'mlflow.db'}"
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return None
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("bilaf")
    if experiment is None:
        return None
    runs = client.search_runs([experiment.experiment_id],
                              f"tags.asset_key = 'boundary_set' and tags.dvc_md5 = '{boundary_hash}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        return None
    tags = runs[0].data.tags
    return {"mlflow_run_id": runs[0].info.run_id, "dagster_run_id": tags.get("dagster_run_id"),
            "git_commit": tags.get("git_commit"), "tracking_uri": uri}

"""The project, DVC and MLflow resources on their own, each on a throwaway project folder."""

import copy
import hashlib
import warnings
from pathlib import Path

import dagster as dg
import pytest
import yaml
from pipeline.conftest import BIN, TINY_PARAMS, run, write_params

from bilaf.errors import BilafError
from dagster_project.defs.resources import DvcResource, ProjectResource, RemoteUnavailableError, push_pending
from dagster_project.defs.tracking import (
    DAGSTER_URL_ENV,
    EXPERIMENT_NAME,
    OUTPUT_MANIFEST,
    AssetRunLogger,
    MlflowResource,
    embedded_database,
    project_tracking_uri,
    sha256_file,
)


def test_project_resource_reads_the_folders_params(project_dir):
    project = ProjectResource(root=str(project_dir))
    assert project.paths.root == project_dir.resolve() and project.paths.params == project_dir / "params.yaml"
    params = project.params()
    assert params.section("boundary") == TINY_PARAMS["boundary"] and params.features.backbone == "tf_efficientnet_lite0"

    bad = copy.deepcopy(TINY_PARAMS)
    bad["boundary"]["penalty"] = 0.5
    write_params(project_dir, bad)
    with pytest.raises(BilafError, match="boundary.penalty must be >= 1"):
        project.params()  # read anew on every call: an edit is seen at once


@pytest.fixture
def dvc_project(tmp_path) -> Path:
    """A git + DVC folder with one stage (in.txt -> out.txt) and a local default remote."""
    root = tmp_path / "dvc-project"
    root.mkdir()
    (root / "in.txt").write_text("input\n")
    (root / "out.txt").write_text("output\n")
    (root / "source").mkdir()
    (root / "source" / "a.txt").write_text("a\n")
    (root / "dvc.yaml").write_text(
        yaml.safe_dump({"stages": {"copy": {"cmd": "cp in.txt out.txt", "deps": ["in.txt"], "outs": ["out.txt"]}}})
    )
    run(["git", "init", "-q"], root)
    dvc = str(BIN / "dvc")
    run([dvc, "init", "-q"], root)
    run([dvc, "config", "core.analytics", "false"], root)
    run([dvc, "remote", "add", "-d", "local", str(root / ".dvc-storage")], root)
    return root


def _stored(store: Path, md5: str) -> Path:
    return store / "files" / "md5" / md5[:2] / md5[2:]


def test_dvc_resource_records_a_stage_and_a_source_and_pushes_them(dvc_project):
    dvc = DvcResource(root=str(dvc_project))
    out_md5 = dvc.commit_stage("copy")
    assert out_md5 == hashlib.md5(b"output\n").hexdigest() == dvc.stage_output_hash("copy")
    assert dvc.dependency_hashes("copy") == {"in.txt": hashlib.md5(b"input\n").hexdigest()}
    assert _stored(dvc_project / ".dvc-storage", out_md5).is_file()  # pushed to the default remote

    source_md5 = dvc.track_source("source")
    assert source_md5.endswith(".dir") and (dvc_project / "source.dvc").is_file()
    assert _stored(dvc_project / ".dvc-storage", source_md5).is_file()
    assert dvc.track_source("source") == source_md5  # unchanged: the same version
    (dvc_project / "source" / "b.txt").write_text("b\n")
    assert dvc.track_source("source") != source_md5


def test_a_refused_push_fails_naming_the_remote_and_the_next_push_sends_it(dvc_project):
    """The remote is unusable (its folder is a file): the commit is kept locally, the error names
    the remote, and once it works again the next push sends what was missed before its own target."""
    storage = dvc_project / ".dvc-storage"
    storage.write_text("not a folder\n")
    dvc = DvcResource(root=str(dvc_project))
    with pytest.raises(
        RemoteUnavailableError,
        match=r"DVC push of copy to remote 'local' \(.*\.dvc-storage\) failed; the next run pushes it",
    ):
        dvc.commit_stage("copy")
    out_md5 = dvc.stage_output_hash("copy")
    assert _stored(dvc_project / ".dvc" / "cache", out_md5).is_file()  # recorded, not lost
    storage.unlink()
    assert push_pending(dvc_project) == ["copy"]
    assert _stored(storage, out_md5).is_file()
    assert push_pending(dvc_project) == []  # nothing left pending


def test_runs_push_to_the_remote_bilaf_dvc_remote_names(dvc_project, monkeypatch):
    other = dvc_project / ".other-storage"
    run([str(BIN / "dvc"), "remote", "add", "--local", "other", str(other)], dvc_project)
    monkeypatch.setenv("BILAF_DVC_REMOTE", "other")
    out_md5 = DvcResource(root=str(dvc_project)).commit_stage("copy")
    assert _stored(other, out_md5).is_file() and not _stored(dvc_project / ".dvc-storage", out_md5).exists()
    monkeypatch.setenv("BILAF_DVC_REMOTE", "nowhere")
    with pytest.raises(BilafError, match="DVC remote 'nowhere' .* is not configured"):
        DvcResource(root=str(dvc_project)).commit_stage("copy")


def test_dvc_resource_without_push_keeps_versions_local(dvc_project):
    out_md5 = DvcResource(root=str(dvc_project), push=False).commit_stage("copy")
    assert _stored(dvc_project / ".dvc" / "cache", out_md5).is_file()
    assert not _stored(dvc_project / ".dvc-storage", out_md5).exists()


def test_dvc_resource_refuses_a_folder_that_is_not_a_dvc_project(tmp_path):
    (tmp_path / "source").mkdir()
    with pytest.raises(RuntimeError, match="is not a DVC project"):
        DvcResource(root=str(tmp_path)).track_source("source")


def test_mlflow_store_precedence_explicit_then_environment_then_embedded(project_dir, monkeypatch):
    """The resource and `bilaf explain` (lineage) name the store through one function."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    embedded = f"sqlite:///{project_dir.resolve() / 'mlflow' / 'mlflow.db'}"
    assert project_tracking_uri(project_dir) == embedded
    assert embedded_database(embedded) == project_dir.resolve() / "mlflow" / "mlflow.db"
    assert MlflowResource(root=str(project_dir)).resolved_tracking_uri() == embedded
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert MlflowResource(root=str(project_dir)).resolved_tracking_uri() == "http://127.0.0.1:1"
    assert embedded_database("http://127.0.0.1:1") is None
    explicit = MlflowResource(root=str(project_dir), tracking_uri="sqlite:///elsewhere.db")
    assert explicit.resolved_tracking_uri() == "sqlite:///elsewhere.db"


def test_the_summary_names_the_teams_uis_when_they_serve_and_the_make_targets_otherwise(project_dir, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(DAGSTER_URL_ENV, raising=False)
    embedded = MlflowResource(root=str(project_dir))
    view = "?workflowType=machine_learning"  # MLflow 3.17's training view, not its GenAI view
    assert embedded.where_to_look("1") == (
        f"Dagster UI: `make ui`; MLflow: `make mlflow-ui`, then http://127.0.0.1:5000/#/experiments/1{view}."
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5123/")  # as `source .team/team.env` sets them
    monkeypatch.setenv(DAGSTER_URL_ENV, "http://127.0.0.1:3123")
    team = MlflowResource(root=str(project_dir))
    assert (
        team.where_to_look("1")
        == f"Dagster UI: http://127.0.0.1:3123; MLflow: http://127.0.0.1:5123/#/experiments/1{view}."
    )
    assert team.run_url("1", "abc") == f"http://127.0.0.1:5123/#/experiments/1/runs/abc{view}"
    assert team.dagster_run_url("r1") == "http://127.0.0.1:3123/runs/r1"


def test_the_pool_is_logged_as_a_dataset_with_its_declared_schema_and_no_warning(project_dir):
    """The pool's manifest may lack labels (a folder source): `label` is a nullable long; logging it
    warns about nothing (MLflow hinted at integer columns and at two readings of a path string)."""
    import json

    import pandas as pd

    client = MlflowResource(root=str(project_dir)).client()
    run = client.create_run(client.create_experiment("pool-logging"))
    manifest = pd.DataFrame(
        {"id": ["a", "b", "c"], "label": pd.array([0, None, 2], dtype="Int64"), "split": ["train"] * 3}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        AssetRunLogger(client, run.info.run_id, "http://x").log_pool(manifest, "v123", project_dir / "data")
    (logged,) = client.get_run(run.info.run_id).inputs.dataset_inputs
    assert (logged.dataset.name, logged.dataset.digest, logged.dataset.source_type) == ("pool", "v123", "local")
    assert json.loads(logged.dataset.source) == {"uri": str(project_dir / "data")}
    schema = {column["name"]: column for column in json.loads(logged.dataset.schema)["mlflow_colspec"]}
    assert schema["label"]["type"] == "long" and schema["label"]["required"] is False
    assert schema["id"]["type"] == "string" and schema["id"]["required"] is True
    assert {tag.key: tag.value for tag in logged.tags} == {"mlflow.data.context": "pool", "rows": "3"}


def test_mlflow_resource_nests_one_run_per_asset_under_the_dagster_run(project_dir):
    mlflow = MlflowResource(root=str(project_dir))
    output = project_dir / "artifacts" / "toy"
    output.mkdir(parents=True)
    (output / "values.txt").write_text("1 2 3\n")

    @dg.asset(name="toy")
    def toy(context: dg.AssetExecutionContext, mlflow: MlflowResource) -> None:
        with mlflow.asset_run(context, "toy", {"code_version": "abc"}) as tracked:
            tracked.log_params({"k": 3, "name": "x"}, prefix="toy.")
            tracked.log_metrics({"accuracy": 0.5})
            tracked.log_output(output)

    @dg.asset(name="broken")
    def broken(context: dg.AssetExecutionContext, mlflow: MlflowResource) -> None:
        with mlflow.asset_run(context, "broken", {}):
            raise ValueError("stage failed")

    with dg.instance_for_test() as instance:
        result = dg.materialize([toy, broken], resources={"mlflow": mlflow}, instance=instance, raise_on_error=False)
    assert not result.success
    client = mlflow.client()
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    assert experiment.artifact_location == (project_dir.resolve() / "mlflow" / "artifacts").as_uri()
    runs = client.search_runs([experiment.experiment_id], f"tags.dagster_run_id = '{result.run_id}'")
    (parent,) = [r for r in runs if r.data.tags["bilaf_level"] == "dagster_run"]
    assets = {r.data.tags["asset_key"]: r for r in runs if r.data.tags["bilaf_level"] == "asset"}
    assert set(assets) == {"toy", "broken"}
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in assets.values())
    assert assets["toy"].info.status == "FINISHED" and assets["broken"].info.status == "FAILED"
    assert parent.info.status == "RUNNING"  # it ends with the Dagster run, not with a step

    toy_run = assets["toy"].data
    assert toy_run.params == {"toy.k": "3", "toy.name": "x"} and toy_run.metrics == {"accuracy": 0.5}
    assert toy_run.tags["code_version"] == "abc" and toy_run.tags["output_name"] == "toy"
    assert toy_run.tags["dagster_run_url"].endswith(f"/runs/{result.run_id}")
    description = toy_run.tags["mlflow.note.content"]  # Markdown in MLflow's UI: a link to the Dagster run
    assert description == f"`toy`, materialized by Dagster run [{result.run_id[:8]}]({toy_run.tags['dagster_run_url']})"
    assert parent.data.tags["mlflow.note.content"].endswith(f"({toy_run.tags['dagster_run_url']})")
    logged = {entry.path for entry in client.list_artifacts(assets["toy"].info.run_id)}
    assert logged == {"toy", OUTPUT_MANIFEST}
    manifest = yaml.safe_load(Path(client.download_artifacts(assets["toy"].info.run_id, OUTPUT_MANIFEST)).read_text())
    assert manifest["values.txt"]["sha256"] == sha256_file(output / "values.txt")

    mlflow.finish_dagster_run(result.run_id, succeeded=False)
    assert client.get_run(parent.info.run_id).info.status == "FAILED"

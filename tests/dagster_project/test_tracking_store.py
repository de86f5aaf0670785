"""One place says which MLflow store a project records into, for the pipeline and for lineage."""

from dagster_project.defs.tracking import MlflowResource, embedded_database, project_tracking_uri


def test_store_precedence_explicit_then_environment_then_embedded(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    embedded = project_tracking_uri(tmp_path)
    assert embedded == f"sqlite:///{tmp_path.resolve() / 'mlflow' / 'mlflow.db'}"
    assert embedded_database(embedded) == tmp_path.resolve() / "mlflow" / "mlflow.db"
    assert MlflowResource(root=str(tmp_path)).resolved_tracking_uri() == embedded
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert project_tracking_uri(tmp_path) == "http://tracking.example:5000"
    assert embedded_database("http://tracking.example:5000") is None
    assert project_tracking_uri(tmp_path, "sqlite:////elsewhere/db") == "sqlite:////elsewhere/db"
    assert MlflowResource(root=str(tmp_path), tracking_uri="sqlite:////elsewhere/db").resolved_tracking_uri() == (
        "sqlite:////elsewhere/db"
    )

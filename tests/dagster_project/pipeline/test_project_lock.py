"""One writer at a time: a second writer is refused with a clear message and writes nothing."""

import numpy as np
import pytest
from PIL import Image

from bilaf.lock import LOCK_NAME, project_lock
from dagster_project.cli import main as bilaf

from .conftest import TINY_PARAMS, make_project

WRITERS = {
    "stage": ["stage", "embeddings"],
    "run": ["run"],
    "labels import": ["labels", "import", "--round", "1"],
}


def test_a_second_ingest_is_refused_naming_the_first_and_writes_nothing(tmp_path, capsys):
    folder = tmp_path / "incoming"
    folder.mkdir()
    Image.fromarray(np.full((6, 6), 9, dtype=np.uint8)).save(folder / "a.png")
    with project_lock(tmp_path, "bilaf run"):
        assert bilaf(["ingest", str(folder), "--project", str(tmp_path)]) == 2
        message = capsys.readouterr().err
        assert "is being written by `bilaf run` (pid" in message and "wait for it to finish" in message
        assert not (tmp_path / "data").exists()
    assert (tmp_path / LOCK_NAME).read_text() == ""  # released, and says so
    assert bilaf(["ingest", str(folder), "--project", str(tmp_path)]) == 0
    assert (tmp_path / "data" / "manifest.csv").is_file()


@pytest.mark.parametrize("writer", list(WRITERS))
def test_every_writer_of_a_valid_project_is_refused_while_another_holds_it(tmp_path, capsys, writer):
    """A project whose params are valid, so that only the lock can stop the writer: it exits 2
    naming the holder, and writes no data, labels, rounds or artifacts."""
    (tmp_path / "project").mkdir()
    root = make_project(tmp_path / "project", TINY_PARAMS)
    labels = tmp_path / "labels.csv"
    labels.write_text("id,label\n")
    arguments = [*WRITERS[writer], *([str(labels)] if writer == "labels import" else [])]
    with project_lock(root, "bilaf run"):
        before = sorted(path.name for path in root.iterdir())
        assert bilaf([*arguments, "--project", str(root)]) == 2
        after = sorted(path.name for path in root.iterdir())
    message = capsys.readouterr().err
    assert "is being written by `bilaf run` (pid" in message and "wait for it to finish" in message, message
    # `bilaf run` opens the project's Dagster instance (settings only) before it asks for the lock:
    # allowed, as long as no run was recorded in it.
    assert set(after) - set(before) <= {".dagster_home"} and set(before) <= set(after)
    if (root / ".dagster_home").exists():
        import dagster as dg

        with dg.DagsterInstance.from_config(str(root / ".dagster_home")) as instance:
            assert instance.get_runs_count() == 0


def test_every_stage_step_is_in_the_one_writer_pool_of_the_instance(tmp_path, monkeypatch):
    import yaml

    from dagster_project.defs.assets import STAGE_ASSETS, WRITER_POOL
    from dagster_project.defs.planning import project_dagster_home

    assert {asset.op.pool for asset in STAGE_ASSETS} == {WRITER_POOL}
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    home = project_dagster_home(tmp_path)
    assert home == tmp_path / ".dagster_home"
    settings = yaml.safe_load((home / "dagster.yaml").read_text())
    assert settings["concurrency"]["pools"]["default_limit"] == 1 and settings["telemetry"]["enabled"] is False

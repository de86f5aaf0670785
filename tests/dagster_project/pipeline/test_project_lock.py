"""One writer at a time: a second writer is refused with a clear message and writes nothing."""

import numpy as np
from PIL import Image

from bilaf.lock import LOCK_NAME, project_lock
from dagster_project.cli import main as bilaf


def test_a_second_writer_is_refused_naming_the_first_and_writes_nothing(tmp_path, capsys):
    folder = tmp_path / "incoming"
    folder.mkdir()
    Image.fromarray(np.full((6, 6), 9, dtype=np.uint8)).save(folder / "a.png")
    with project_lock(tmp_path, "bilaf run"):
        assert bilaf(["ingest", str(folder), "--project", str(tmp_path)]) == 2
        message = capsys.readouterr().err
        assert "is being written by `bilaf run` (pid" in message and "wait for it to finish" in message
        assert not (tmp_path / "data").exists()
        assert bilaf(["stage", "embeddings", "--project", str(tmp_path)]) == 2
    assert (tmp_path / LOCK_NAME).read_text() == ""  # released, and says so
    assert bilaf(["ingest", str(folder), "--project", str(tmp_path)]) == 0
    assert (tmp_path / "data" / "manifest.csv").is_file()


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

"""One writer at a time: a second writer is refused with a clear message and writes nothing."""

import numpy as np
from PIL import Image

from dagster_project.cli import main as bilaf
from dagster_project.lock import LOCK_NAME, project_lock


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

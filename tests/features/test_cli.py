"""`bilaf data prepare` and `bilaf embed` end to end on a tiny pool."""
from __future__ import annotations

import pytest

from dagster_project.cli import main
from dagster_project.features import load_embeddings, read_manifest


def test_prepare_then_embed(tmp_path, capsys):
    data, out = tmp_path / "data", tmp_path / "artifacts" / "embeddings"
    assert main(["data", "prepare", "--out", str(data), "--train-size", "20", "--test-size", "10",
                 "--seed", "2"]) == 0
    assert "train 20, test 10" in capsys.readouterr().out
    assert len(read_manifest(data)) == 30
    assert main(["embed", "--data", str(data), "--out", str(out), "--image-size", "32",
                 "--batch-size", "16"]) == 0
    assert "30 x 1280 (30 computed, 0 from cache" in capsys.readouterr().out
    assert (tmp_path / "artifacts" / "embedding_cache").is_dir()  # default cache: next to the output
    assert load_embeddings(out).features.shape == (30, 1280)
    assert main(["embed", "--data", str(data), "--out", str(out), "--image-size", "32"]) == 0
    assert "(0 computed, 30 from cache" in capsys.readouterr().out


def test_user_errors_exit_2_with_the_reason(tmp_path, capsys):
    assert main(["embed", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "out")]) == 2
    assert f"data directory {tmp_path / 'missing'} does not exist" in capsys.readouterr().err
    assert main(["data", "prepare", "--source", "image-folder", "--root", str(tmp_path),
                 "--out", str(tmp_path / "data")]) == 2
    assert "contains no files" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["data", "prepare", "--train-size", "-3"])
    assert "non-negative integer or 'all'" in capsys.readouterr().err

"""`bilaf data sync`, `bilaf ingest`, `bilaf embed` and `bilaf select` on an embeddings folder, end to end on tiny
pools."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bilaf.features import load_embeddings, pool_version, read_manifest
from bilaf.selection import SelectionResult, select
from dagster_project.cli import main
from dagster_project.dvc import run_dvc


def _write_png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    Image.fromarray(np.full((6, 6), value, dtype=np.uint8)).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())


def test_sync_then_embed(tmp_path, capsys):
    data, out = tmp_path / "data", tmp_path / "artifacts" / "embeddings"
    assert main(["data", "sync", "--out", str(data), "--train-size", "20", "--test-size", "10", "--seed", "2"]) == 0
    assert "train 20 (+20), test 10 (+10)" in capsys.readouterr().out
    assert len(read_manifest(data)) == 30
    assert main(["embed", "--data", str(data), "--out", str(out), "--image-size", "32", "--batch-size", "16"]) == 0
    assert "30 x 1280 (30 computed, 0 from cache" in capsys.readouterr().out
    assert (tmp_path / "artifacts" / "embedding_cache").is_dir()  # default cache: next to the output
    assert load_embeddings(out).features.shape == (30, 1280)
    assert main(["embed", "--data", str(data), "--out", str(out), "--image-size", "32"]) == 0
    assert "(0 computed, 30 from cache" in capsys.readouterr().out


def test_select_from_an_embeddings_folder_names_the_items_and_keeps_to_a_split(small_pool, tmp_path, capsys):
    out = tmp_path / "embeddings"
    assert (
        main(
            [
                "embed",
                "--data",
                str(small_pool),
                "--out",
                str(out),
                "--image-size",
                "32",
                "--batch-size",
                "16",
                "--cache-dir",
                str(tmp_path / "cache"),
            ]
        )
        == 0
    )
    embeddings, manifest = load_embeddings(out), read_manifest(small_pool)
    path_of = dict(zip(manifest["id"], manifest["path"]))
    ids = embeddings.ids.tolist()
    flags = ["--cores", "3", "--n-iterations", "5"]

    assert (
        main(
            [
                "select",
                "--features",
                str(out),
                "--data",
                str(small_pool),
                "--budget",
                "9",
                *flags,
                "--out",
                str(tmp_path / "all.csv"),
            ]
        )
        == 0
    )
    assert "selected 9 of 64 items" in capsys.readouterr().out
    with (tmp_path / "all.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    expected = select(np.asarray(embeddings.features), 9, n_cores=3, n_iterations=5)
    assert [int(row["index"]) for row in rows] == expected.indices.tolist()
    assert [row["id"] for row in rows] == [ids[index] for index in expected.indices]
    assert [row["path"] for row in rows] == [str(small_pool / path_of[ids[index]]) for index in expected.indices]
    assert all(Path(row["path"]).is_file() for row in rows)

    assert (
        main(
            [
                "select",
                "--features",
                str(out),
                "--split",
                "test",
                "--budget",
                "6",
                *flags,
                "--out",
                str(tmp_path / "test.json"),
            ]
        )
        == 0
    )
    assert "selected 6 of 16 test items" in capsys.readouterr().out
    written = json.loads((tmp_path / "test.json").read_text())
    test_rows = np.flatnonzero(embeddings.splits == "test")
    local = select(embeddings.subset("test").features, 6, n_cores=3, n_iterations=5)
    assert written["indices"] == test_rows[local.indices].tolist()  # rows of features.npy, not of the split
    assert SelectionResult.from_dict(written) == local.on_rows(test_rows)
    assert written["ids"] == [ids[index] for index in written["indices"]] and "paths" not in written
    assert {embeddings.splits[index] for index in written["indices"]} == {"test"}

    np.save(tmp_path / "f.npy", embeddings.features)
    assert (
        main(
            [
                "select",
                "--features",
                str(tmp_path / "f.npy"),
                "--split",
                "train",
                "--budget",
                "4",
                "--out",
                str(tmp_path / "x.csv"),
            ]
        )
        == 2
    )
    assert "--split and --data need an embeddings folder" in capsys.readouterr().err


def test_ingest_summarises_and_lists_unreadable_files(tmp_path, capsys):
    folder = tmp_path / "incoming"
    for index in range(3):
        _write_png(folder / "cat" / f"{index}.png", index)
    _write_png(folder / "dog" / "copy.png", 0)
    (folder / "dog" / "broken.jpg").write_bytes(b"plain text")
    (folder / "README.md").write_text("photos\n")
    assert main(["ingest", str(folder), "--project", str(tmp_path), "--split", "test"]) == 0
    captured = capsys.readouterr()
    assert "added 3 (test), duplicates 1, unreadable 1, ignored 1;" in captured.out
    assert "dog/broken.jpg: not an image" in captured.err
    assert read_manifest(tmp_path / "data")["split"].tolist() == ["test"] * 3
    assert main(["ingest", str(folder), "--project", str(tmp_path)]) == 0
    assert "added 0 (train), duplicates 4" in capsys.readouterr().out


def test_ingest_records_the_new_version_in_a_dvc_project(tmp_path, capsys):
    run_dvc(tmp_path, "init", "--no-scm", "-q")
    _write_png(tmp_path / "incoming" / "a.png", 1)
    assert main(["ingest", str(tmp_path / "incoming"), "--project", str(tmp_path)]) == 0
    assert f"recorded in {tmp_path / 'data.dvc'}" in capsys.readouterr().out
    first = (tmp_path / "data.dvc").read_text()
    _write_png(tmp_path / "incoming" / "b.png", 2)
    assert main(["ingest", str(tmp_path / "incoming"), "--project", str(tmp_path)]) == 0
    assert (tmp_path / "data.dvc").read_text() != first
    report = json.loads((tmp_path / "data" / "pool_report.json").read_text())
    assert report["pool_version"] == pool_version(tmp_path / "data")


def test_user_errors_exit_2_with_the_reason(tmp_path, capsys):
    assert main(["embed", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "out")]) == 2
    assert f"data directory {tmp_path / 'missing'} does not exist" in capsys.readouterr().err
    assert (
        main(["data", "sync", "--source", "image-folder", "--root", str(tmp_path), "--out", str(tmp_path / "data")])
        == 2
    )
    assert "contains no image files" in capsys.readouterr().err
    assert main(["ingest", str(tmp_path / "nowhere"), "--project", str(tmp_path)]) == 2
    assert f"bilaf ingest: error: image folder {tmp_path / 'nowhere'} does not exist" in capsys.readouterr().err
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("label these\n")
    assert main(["ingest", str(tmp_path / "notes"), "--project", str(tmp_path)]) == 2
    assert "contains no image files (1 other file(s) ignored, e.g. todo.txt)" in capsys.readouterr().err
    _write_png(tmp_path / "mixed" / "good.png", 5)
    (tmp_path / "mixed" / "bad.png").write_bytes(b"")
    assert main(["ingest", str(tmp_path / "mixed"), "--project", str(tmp_path), "--on-unreadable", "fail"]) == 2
    assert "1 unreadable file(s)" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()
    with pytest.raises(SystemExit):
        main(["data", "sync", "--train-size", "-3"])
    assert "non-negative integer or 'all'" in capsys.readouterr().err

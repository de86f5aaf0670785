"""Result serialisation and the `bilaf select` sub-command."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from bilaf.selection import CoreSelection, DenoisedPool, SelectionResult, denoise, select, select_boundary, select_cores
from bilaf.selection.results import RECORD_FIELDS
from dagster_project.cli import main


@pytest.fixture
def features(mixture):
    return mixture(700, 4, 8, 3.0, 0)[0]


def test_results_round_trip_through_json(features):
    cores = select_cores(features, 8, "activeft", seed=2, n_iterations=10)
    pool = denoise(features, cores)
    result = select_boundary(features, cores, pool, 40)
    for obj, kind in ((cores, CoreSelection), (pool, DenoisedPool), (result, SelectionResult)):
        restored = kind.from_dict(json.loads(json.dumps(obj.to_dict())))
        assert restored == obj
        assert restored.to_dict() == obj.to_dict()
    restored_pool = DenoisedPool.from_dict(json.loads(json.dumps(pool.to_dict())))
    members = restored_pool.members(0)  # kept items of cluster 0 in absorption order, from the JSON
    points = features / np.linalg.norm(features, axis=1, keepdims=True) if pool.normalized else features
    nearest = np.linalg.norm(points[:, None] - points[pool.cores][None], axis=2).argmin(axis=1)
    assert set(members.tolist()) <= set(np.flatnonzero(nearest == 0).tolist())
    assert len(members) == pool.clusters[0].denoised_size
    assert np.all(np.diff(restored_pool.absorption_rank[members]) > 0)
    assert members[0] == pool.cores[0]  # the core is absorbed first


def test_result_arrays_are_read_only(features):
    result = select(features, 20, "random")
    with pytest.raises(ValueError):
        result.indices[0] = 1


def test_records_hold_one_row_per_pick(features):
    result = select(features, 30, n_cores=6, n_iterations=5)
    records = result.to_records()
    assert [r["index"] for r in records] == result.indices.tolist()
    assert all(tuple(r) == RECORD_FIELDS for r in records)
    cores = [r for r in records if r["role"] == "core"]
    assert len(cores) == 6 and all(r["boundary_score"] is None for r in cores)
    boundary = [r for r in records if r["role"] == "boundary"]
    assert all(r["rival_center"] in result.core_indices for r in boundary)
    assert all(r["penalty_factor"] >= 1.0 for r in boundary)


def test_cli_writes_csv_from_npy(tmp_path, features, capsys):
    np.save(tmp_path / "f.npy", features)
    out = tmp_path / "out" / "selection.csv"
    code = main(
        [
            "select",
            "--features",
            str(tmp_path / "f.npy"),
            "--budget",
            "35",
            "--cores",
            "7",
            "--n-iterations",
            "5",
            "--penalty",
            "1.2",
            "--out",
            str(out),
        ]
    )
    assert code == 0 and "selected 35 of 700" in capsys.readouterr().out
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 35 and tuple(rows[0]) == RECORD_FIELDS
    expected = select(features, 35, n_cores=7, n_iterations=5, penalty=1.2)
    assert [int(r["index"]) for r in rows] == expected.indices.tolist()
    assert sum(r["role"] == "core" for r in rows) == 7


def test_cli_writes_json_from_npz(tmp_path, features):
    np.savez(tmp_path / "f.npz", features=features)
    out = tmp_path / "selection.json"
    assert (
        main(
            [
                "select",
                "--features",
                str(tmp_path / "f.npz"),
                "--budget",
                "20",
                "--method",
                "kmeans",
                "--variant",
                "repo",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    result = SelectionResult.from_dict(json.loads(out.read_text()))
    assert result == select(features, 20, "kmeans", variant="repo")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--out", "selection.txt"], "must end in .csv or .json"),
        (["--features", "missing.npy"], "does not exist"),
        (["--budget", "800"], "budget 800 is larger than the pool"),
        (["--features", "wrong.npz"], "no array named 'features'"),
        (["--features", "garbage.npy"], "garbage.npy is not a NumPy array file"),
        (["--features", "f.txt"], "must be .npy or .npz"),
    ],
)
def test_cli_reports_user_errors(tmp_path, monkeypatch, features, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    np.save("f.npy", features)
    np.savez("wrong.npz", embeddings=features)
    Path("garbage.npy").write_bytes(b"not an array")
    Path("f.txt").write_text("1 2 3")
    defaults = {"--features": "f.npy", "--budget": "10", "--out": "selection.csv"}
    for flag, value in zip(args[::2], args[1::2]):
        defaults[flag] = value
    argv = ["select", *[item for pair in defaults.items() for item in pair]]
    assert main(argv) == 2
    assert message in capsys.readouterr().err

"""dvc.lock and .dvc files are read in one place, both hash spellings DVC writes included."""

import pytest
import yaml

from bilaf.errors import InvalidInputError
from dagster_project import dvc


def _write_lock(root, stages):
    (root / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": stages}))


def test_stage_hashes_read_md5_and_hash_entries(tmp_path):
    _write_lock(
        tmp_path,
        {
            "core_centers": {
                "cmd": "bilaf stage core_centers",
                "deps": [
                    {"path": "artifacts/embeddings", "md5": "aaa.dir"},
                    {"path": "bilaf/stages.py", "hash": "md5", "md5": "bbb"},
                ],
                "outs": [{"path": "artifacts/core_centers.json", "md5": "ccc"}],
            }
        },
    )
    assert dvc.stage_output_hash(tmp_path, "core_centers") == "ccc"
    assert dvc.stage_dependency_hashes(tmp_path, "core_centers") == {
        "artifacts/embeddings": "aaa.dir",
        "bilaf/stages.py": "bbb",
    }


def test_a_stage_missing_from_dvc_lock_is_named(tmp_path):
    with pytest.raises(InvalidInputError, match="records no stage 'evaluation'"):
        dvc.stage_output_hash(tmp_path, "evaluation")  # no dvc.lock at all
    _write_lock(tmp_path, {"embeddings": {"outs": [{"path": "artifacts/embeddings", "md5": "x.dir"}]}})
    with pytest.raises(InvalidInputError, match="records no stage 'evaluation'"):
        dvc.stage_dependency_hashes(tmp_path, "evaluation")


def test_tracked_hash_of_a_dvc_file(tmp_path):
    assert dvc.tracked_hash(tmp_path, "data") is None
    (tmp_path / "data.dvc").write_text(yaml.safe_dump({"outs": [{"path": "data", "hash": "md5", "md5": "ddd.dir"}]}))
    assert dvc.tracked_hash(tmp_path, "data") == "ddd.dir"

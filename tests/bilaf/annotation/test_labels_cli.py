"""`bilaf labels import|tasks|config` on a real project folder."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ElementTree

import yaml
from annotation_project import BATCH_SIZE, CLASSES, FIXTURES, store_bytes

from bilaf.annotation import load_labels
from dagster_project import dvc
from dagster_project.cli import main


def test_import_prints_what_it_did_and_a_second_import_is_a_no_op(project, pool_ids, capsys):
    export = FIXTURES / "label_studio_round.json"
    assert main(["labels", "import", str(export), "--round", "1", "--project", str(project)]) == 0
    out = capsys.readouterr().out
    assert "(label-studio-json): 5 label(s) added, 0 already known, 2 not annotated yet" in out
    assert f"2 of the round's {BATCH_SIZE} items still unlabeled" in out and "recorded with DVC" not in out
    labels = load_labels(project / "labels", pool_ids=pool_ids, classes=CLASSES, batches={1: pool_ids[:BATCH_SIZE]})
    assert len(labels) == 5
    before = store_bytes(project / "labels")
    assert (
        main(["labels", "import", str(FIXTURES / "label_studio_round.csv"), "--round", "1", "--project", str(project)])
        == 0
    )
    assert "0 label(s) added, 5 already known, 1 not annotated yet" in capsys.readouterr().out
    assert store_bytes(project / "labels") == before


def test_user_errors_exit_2_with_one_line_and_write_nothing(project, capsys):
    conflict = FIXTURES / "label_studio_conflict.min.json"
    assert main(["labels", "import", str(conflict), "--round", "1", "--project", str(project)]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"bilaf labels: error: {conflict}: nothing imported: 1 id(s) given different labels")
    assert error.count("\n") == 1 and not (project / "labels").exists()
    assert main(["labels", "import", str(conflict), "--round", "2", "--project", str(project)]) == 2
    assert "round 2 has no annotation batch (rounds with a batch: 1)" in capsys.readouterr().err
    (project / "wrong.csv").write_text("file,class\n")
    assert main(["labels", "import", str(project / "wrong.csv"), "--round", "1", "--project", str(project)]) == 2
    assert "columns found: file, class" in capsys.readouterr().err


def test_import_in_a_dvc_project_records_the_labels_version(project, capsys):
    dvc.run_dvc(project, "init", "--no-scm", "-q")
    assert (
        main(
            [
                "labels",
                "import",
                str(FIXTURES / "label_studio_round.min.json"),
                "--round",
                "1",
                "--project",
                str(project),
            ]
        )
        == 0
    )
    recorded = yaml.safe_load((project / "labels.dvc").read_text())["outs"][0]
    assert recorded["path"] == "labels" and f"labels.dvc md5 {dvc.md5_of(recorded)}" in capsys.readouterr().out


def test_tasks_for_another_document_root_and_the_labeling_config(project, pool_ids, capsys, tmp_path):
    out = tmp_path / "tasks.json"
    assert (
        main(
            [
                "labels",
                "tasks",
                "--round",
                "1",
                "--document-root",
                str(project / "data"),
                "--out",
                str(out),
                "--project",
                str(project),
            ]
        )
        == 0
    )
    assert f"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={project / 'data'}" in capsys.readouterr().out
    tasks = json.loads(out.read_text())
    assert [task["data"]["item_id"] for task in tasks] == pool_ids[:BATCH_SIZE]
    assert tasks[2]["data"] == {
        "image": f"/data/local-files/?d=images/train/{pool_ids[2]}.png",
        "item_id": pool_ids[2],
        "rank": 2,
        "role": "core",
        "cluster": 2,
        "boundary_score": None,
    }
    assert main(["labels", "tasks", "--round", "1", "--out", str(out), "--project", str(project)]) == 0
    default_root = json.loads(out.read_text())[0]["data"]["image"]
    assert default_root == f"/data/local-files/?d=data/images/train/{pool_ids[0]}.png"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert (
        main(
            [
                "labels",
                "tasks",
                "--round",
                "1",
                "--document-root",
                str(elsewhere),
                "--out",
                str(out),
                "--project",
                str(project),
            ]
        )
        == 2
    )
    assert "outside the Label Studio document root" in capsys.readouterr().err

    config = tmp_path / "config.xml"
    assert main(["labels", "config", "--out", str(config), "--project", str(project)]) == 0
    assert [choice.get("value") for choice in ElementTree.fromstring(config.read_text()).iter("Choice")] == CLASSES


def test_tasks_come_from_a_frozen_rounds_batch(project, pool_ids, tmp_path):
    frozen = project / "rounds" / "round-001"
    frozen.mkdir(parents=True)
    shutil.copy(project / "artifacts" / "annotation_batch" / "to_annotate.csv", frozen / "batch.csv")
    (project / "artifacts" / "annotation_batch" / "round.json").write_text(json.dumps({"round": 2, "inputs": {}}))
    out = tmp_path / "tasks.json"
    assert main(["labels", "tasks", "--round", "1", "--out", str(out), "--project", str(project)]) == 0
    assert len(json.loads(out.read_text())) == BATCH_SIZE

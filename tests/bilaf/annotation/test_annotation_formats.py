"""Annotator files as Label Studio 1.23.2 really exports them (fixtures/), plain CSV, and refusals."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
from annotation_project import CLASSES, FIXTURES

from bilaf.annotation import read_annotator_file

# What the round fixtures' project was annotated with, by batch rank: 0-3 once each, 4 skipped
# (a cancelled annotation), 5 never opened, 6 twice with the same choice.
ANNOTATED = {0: CLASSES[0], 1: CLASSES[1], 2: CLASSES[2], 3: CLASSES[0], 6: CLASSES[1]}


def labels_by_rank(rows, pool_ids) -> dict[int, list[str]]:
    rank_of = {item: rank for rank, item in enumerate(pool_ids)}
    found: dict[int, list[str]] = {}
    for row in rows:
        found.setdefault(rank_of[row.item_id], []).append(row.label)
    return found


@pytest.mark.parametrize(
    ("name", "file_format"),
    [
        ("label_studio_round.json", "label-studio-json"),
        ("label_studio_round.min.json", "label-studio-json-min"),
        ("label_studio_round.csv", "label-studio-csv"),
    ],
)
def test_label_studio_exports_give_item_ids_and_choices(name, file_format, pool_ids):
    parsed = read_annotator_file(FIXTURES / name)
    assert parsed.format == file_format
    # Keyed by our item_id, never Label Studio's task id; rank 6's two agreeing annotations are one row.
    assert labels_by_rank(parsed.rows, pool_ids) == {rank: [label] for rank, label in ANNOTATED.items()}
    # The skipped task is a cancelled annotation in JSON and missing from CSV and JSON-MIN.
    skipped = [pool_ids[4]] if file_format == "label-studio-json" else []
    assert sorted(parsed.not_annotated) == sorted([pool_ids[5], *skipped])


@pytest.mark.parametrize(
    "name", ["label_studio_conflict.json", "label_studio_conflict.min.json", "label_studio_conflict.csv"]
)
def test_a_task_annotated_twice_differently_gives_both_labels(name, pool_ids):
    parsed = read_annotator_file(FIXTURES / name)
    found = labels_by_rank(parsed.rows, pool_ids)
    assert sorted(found[0]) == sorted([CLASSES[0], CLASSES[2]]) and found[1] == [CLASSES[1]]


def test_row_numbers_point_into_the_file(pool_ids):
    csv_rows = read_annotator_file(FIXTURES / "label_studio_round.csv").rows
    lines = (FIXTURES / "label_studio_round.csv").read_text().splitlines()
    assert all(row.item_id in lines[row.row_number - 1] for row in csv_rows)
    min_rows = read_annotator_file(FIXTURES / "label_studio_round.min.json").rows
    entries = json.loads((FIXTURES / "label_studio_round.min.json").read_text())
    assert all(entries[row.row_number - 1]["item_id"] == row.item_id for row in min_rows)


def test_plain_csv_with_unlabeled_rows(tmp_path, pool_ids):
    path = tmp_path / "labels.csv"
    path.write_text(f'id,label\n{pool_ids[0]},{CLASSES[1]}\n{pool_ids[1]}, \n"{pool_ids[2]}","Bag, ""large"""\n')
    parsed = read_annotator_file(path)
    assert parsed.format == "csv"
    assert [(row.row_number, row.item_id, row.label) for row in parsed.rows] == [
        (2, pool_ids[0], CLASSES[1]),
        (4, pool_ids[2], CLASSES[2]),
    ]
    assert parsed.not_annotated == (pool_ids[1],)


@pytest.mark.parametrize(
    ("name", "renamed", "file_format"),
    [
        ("label_studio_round.min.json", "export.csv", "label-studio-json-min"),
        ("label_studio_round.json", "export.txt", "label-studio-json"),
        ("label_studio_round.csv", "export.json", "label-studio-csv"),
    ],
)
def test_format_comes_from_the_content_not_the_extension(tmp_path, name, renamed, file_format):
    shutil.copy(FIXTURES / name, tmp_path / renamed)
    assert read_annotator_file(tmp_path / renamed).format == file_format


def test_a_spreadsheets_byte_order_mark_is_not_part_of_the_header(tmp_path, pool_ids):
    path = tmp_path / "labels.csv"
    path.write_text(f"id,label\n{pool_ids[0]},{CLASSES[0]}\n", encoding="utf-8-sig")
    assert read_annotator_file(path).rows[0].item_id == pool_ids[0]


def _without_column(source, target, column) -> None:
    with open(source, newline="") as handle:
        records = list(csv.DictReader(handle))
    with open(target, "w", newline="") as handle:
        writer = csv.DictWriter(handle, [name for name in records[0] if name != column])
        writer.writeheader()
        writer.writerows({name: value for name, value in record.items() if name != column} for record in records)


def test_files_without_usable_columns_or_keys_are_refused_naming_what_was_found(tmp_path):
    wrong_columns = tmp_path / "wrong.csv"
    wrong_columns.write_text("image,choice\na.png,cat\n")
    with pytest.raises(ValueError, match=r"needs an `id`.*`label` column; columns found: image, choice"):
        read_annotator_file(wrong_columns)

    no_item_id = tmp_path / "no_item_id.csv"
    _without_column(FIXTURES / "label_studio_round.csv", no_item_id, "item_id")
    with pytest.raises(ValueError, match=r"Label Studio export without an `item_id`.*task number.*annotation_id"):
        read_annotator_file(no_item_id)

    entries = json.loads((FIXTURES / "label_studio_round.min.json").read_text())
    entries[2].pop("item_id")
    (tmp_path / "min.json").write_text(json.dumps(entries))
    with pytest.raises(ValueError, match=r"row 3 has no `item_id`.*keys found: image, role"):
        read_annotator_file(tmp_path / "min.json")

    tasks = json.loads((FIXTURES / "label_studio_round.json").read_text())
    tasks[1]["data"].pop("item_id")
    (tmp_path / "tasks.json").write_text(json.dumps(tasks))
    with pytest.raises(ValueError, match=r"row 2 \(Label Studio task 9\) has no data.item_id; data keys found: image"):
        read_annotator_file(tmp_path / "tasks.json")

    for task in tasks:
        for annotation in task["annotations"]:
            for result in annotation["result"]:
                result["from_name"] = "choice"
    tasks[1]["data"]["item_id"] = "x"
    (tmp_path / "renamed.json").write_text(json.dumps(tasks))
    with pytest.raises(ValueError, match=r"no choices named `label`.*found under: choice"):
        read_annotator_file(tmp_path / "renamed.json")


def test_not_an_export_is_refused(tmp_path):
    (tmp_path / "object.json").write_text('{"tasks": []}')
    with pytest.raises(ValueError, match="JSON list of tasks; found an object with keys: tasks"):
        read_annotator_file(tmp_path / "object.json")
    (tmp_path / "broken.json").write_text('[{"item_id": ')
    with pytest.raises(ValueError, match="not valid JSON"):
        read_annotator_file(tmp_path / "broken.json")
    (tmp_path / "empty.csv").write_text("\n")
    with pytest.raises(ValueError, match="empty.csv: file is empty"):
        read_annotator_file(tmp_path / "empty.csv")
    with pytest.raises(ValueError, match="missing.csv: file not found"):
        read_annotator_file(tmp_path / "missing.csv")
    (tmp_path / "multi.json").write_text(
        json.dumps([{"item_id": "a", "label": {"choices": ["x", "y"]}, "annotation_id": 1}])
    )
    with pytest.raises(ValueError, match=r'row 1 \(a\) has label \{"choices".*not one choice'):
        read_annotator_file(tmp_path / "multi.json")


def test_a_file_that_is_not_utf8_is_refused_naming_it(tmp_path):
    (tmp_path / "latin1.csv").write_bytes("id,label\nab,Gürtel\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.csv: not UTF-8 text"):
        read_annotator_file(tmp_path / "latin1.csv")

"""Annotator files -> `(row_number, item_id, label)` rows, whatever tool wrote them.

Formats, told apart by content (Label Studio names every export `project-N-at-....json|csv`):

- plain CSV: columns `id,label` (a row with an empty label is not annotated yet).
- Label Studio 1.23 CSV export: one row per annotation, columns sorted by name
  (`annotation_id,annotator,...,id,image,item_id,label,...`). `id` is Label Studio's task number,
  never ours: our id is `item_id`. The label sits under the Choices tag's name (`label`); a task
  without an annotation has an empty `label` and `annotation_id`.
- Label Studio JSON export: a list of tasks, `data.item_id`, and per annotation
  `result[].value.choices` under `from_name` `label`. Skipped tasks keep their annotation with
  `was_cancelled: true` and the choice still in `result`: those are not labels.
- Label Studio JSON-MIN export: a list with one object per annotation, the task's data flattened
  (`item_id`, ...), `id` the task number and `label` the choice; a task without an annotation has
  no `label` key and `annotation_id: null`.

Skipped tasks are missing from the CSV and JSON-MIN exports altogether. A task annotated twice is two
rows (CSV, JSON-MIN) or two annotations (JSON): read as one row when they agree, one row per choice
when they do not (a conflict the label store refuses). Row numbers are the CSV line (header = 1) or
the 1-based position in the JSON list.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from bilaf.annotation.label_studio import LABEL_FIELD
from bilaf.errors import InvalidInputError, MissingFileError

ID_COLUMN = "id"
ITEM_ID_FIELD = "item_id"  # our id inside a Label Studio task's data
_LISTED = 10  # rows named in an error message; the rest are counted


class AnnotationRow(NamedTuple):
    """One label read from an annotator file; `row_number` points back into that file."""

    row_number: int
    item_id: str
    label: str


@dataclasses.dataclass(frozen=True)
class AnnotatorFile:
    """What an annotator file holds: its format, its labels and the items it lists unlabeled."""

    path: Path
    format: str  # csv, label-studio-csv, label-studio-json or label-studio-json-min
    rows: tuple[AnnotationRow, ...]
    not_annotated: tuple[str, ...]  # item ids of tasks (rows) without an annotation yet


def describe_rows(items: Sequence[str]) -> str:
    """The first few of `items` joined, and how many more: the tail of every row-naming error."""
    shown = ", ".join(items[:_LISTED])
    return shown if len(items) <= _LISTED else f"{shown} and {len(items) - _LISTED} more"


def read_annotator_file(path: Path) -> AnnotatorFile:
    """Read a plain CSV or a Label Studio CSV/JSON/JSON-MIN export; ValueError naming what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: file not found")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a spreadsheet's byte-order mark is not a column name
    except UnicodeDecodeError as error:
        raise InvalidInputError(f"{path}: not UTF-8 text ({error}); save it as UTF-8") from None
    if not text.strip():
        raise InvalidInputError(f"{path}: file is empty")
    if text.lstrip()[0] in "[{":
        return _read_json(path, text)
    return _read_csv(path, text)


def _read_csv(path: Path, text: str) -> AnnotatorFile:
    reader = csv.DictReader(io.StringIO(text))
    columns = list(reader.fieldnames or [])
    id_column = ITEM_ID_FIELD if ITEM_ID_FIELD in columns else ID_COLUMN
    if "annotation_id" in columns and ITEM_ID_FIELD not in columns:
        raise InvalidInputError(
            f"{path}: a Label Studio export without an `{ITEM_ID_FIELD}` column (its `id` is Label "
            f"Studio's task number, not ours); import the tasks from label_studio_tasks.json, which "
            f"carry `{ITEM_ID_FIELD}`. Columns found: {', '.join(columns)}"
        )
    if id_column not in columns or LABEL_FIELD not in columns:
        raise InvalidInputError(
            f"{path}: needs an `{ID_COLUMN}` (or Label Studio's `{ITEM_ID_FIELD}`) and a "
            f"`{LABEL_FIELD}` column; columns found: {', '.join(columns) or 'none'}"
        )
    label_studio = id_column == ITEM_ID_FIELD
    rows, not_annotated, without_id, annotations = [], [], [], set()
    for record in reader:
        item_id, label = (record[id_column] or "").strip(), (record[LABEL_FIELD] or "").strip()
        if not item_id:
            without_id.append(f"row {reader.line_num}")
        elif not label:
            not_annotated.append(item_id)
        elif not label_studio or _first_annotation(annotations, record.get(ID_COLUMN), item_id, label):
            rows.append(AnnotationRow(reader.line_num, item_id, label))
    if without_id:
        raise InvalidInputError(
            f"{path}: {len(without_id)} row(s) without an `{id_column}`: {describe_rows(without_id)}"
        )
    return AnnotatorFile(path, "label-studio-csv" if label_studio else "csv", tuple(rows), tuple(not_annotated))


def _read_json(path: Path, text: str) -> AnnotatorFile:
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidInputError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(entries, list):
        found = (
            f"an object with keys: {', '.join(map(str, entries))}"
            if isinstance(entries, dict)
            else f"a JSON {type(entries).__name__}"
        )
        raise InvalidInputError(f"{path}: a Label Studio export is a JSON list of tasks; found {found}")
    not_objects = [f"row {position}" for position, entry in enumerate(entries, 1) if not isinstance(entry, dict)]
    if not_objects:
        raise InvalidInputError(
            f"{path}: {len(not_objects)} entry(ies) are not JSON objects: {describe_rows(not_objects)}"
        )
    if entries and "annotations" in entries[0]:
        return _read_label_studio_json(path, entries)
    return _read_label_studio_json_min(path, entries)


def _read_label_studio_json(path: Path, tasks: list[dict[str, Any]]) -> AnnotatorFile:
    rows, not_annotated, other_choice_names = [], [], set()
    for position, task in enumerate(tasks, 1):
        data = task.get("data")
        if not isinstance(data, dict) or not isinstance(task.get("annotations"), list):
            raise InvalidInputError(
                f"{path}: row {position} is not a Label Studio task (needs `data` and `annotations`); "
                f"keys found: {', '.join(task)}"
            )
        item_id = str(data.get(ITEM_ID_FIELD) or "").strip()
        if not item_id:
            raise InvalidInputError(
                f"{path}: row {position} (Label Studio task {task.get('id')}) has no "
                f"data.{ITEM_ID_FIELD}; data keys found: {', '.join(data) or 'none'}. Import the "
                "tasks from label_studio_tasks.json, which carry it"
            )
        labels = []
        for annotation in task["annotations"]:
            if annotation.get("was_cancelled"):
                continue
            for result in annotation.get("result") or []:
                if result.get("type") != "choices":
                    continue
                if result.get("from_name") != LABEL_FIELD:
                    other_choice_names.add(str(result.get("from_name")))
                    continue
                labels.extend(str(choice).strip() for choice in result.get("value", {}).get("choices", []))
        rows.extend(AnnotationRow(position, item_id, label) for label in dict.fromkeys(labels))
        if not labels:
            not_annotated.append(item_id)
    if not rows and other_choice_names:
        raise InvalidInputError(
            f"{path}: no choices named `{LABEL_FIELD}` (the labeling config's Choices tag); "
            f"choices found under: {', '.join(sorted(other_choice_names))}"
        )
    return AnnotatorFile(path, "label-studio-json", tuple(rows), tuple(not_annotated))


def _read_label_studio_json_min(path: Path, entries: list[dict[str, Any]]) -> AnnotatorFile:
    rows, not_annotated, annotations = [], [], set()
    for position, entry in enumerate(entries, 1):
        item_id = str(entry.get(ITEM_ID_FIELD) or "").strip()
        if not item_id:
            raise InvalidInputError(
                f"{path}: row {position} has no `{ITEM_ID_FIELD}` (`id` is Label Studio's task "
                f"number, not ours); keys found: {', '.join(entry) or 'none'}"
            )
        if LABEL_FIELD not in entry:
            if entry.get("annotation_id") is not None:
                raise InvalidInputError(
                    f"{path}: row {position} is an annotation without a `{LABEL_FIELD}` key (the "
                    f"labeling config's Choices tag); keys found: {', '.join(entry)}"
                )
            not_annotated.append(item_id)
            continue
        label = entry[LABEL_FIELD]
        if not isinstance(label, str):
            raise InvalidInputError(
                f"{path}: row {position} ({item_id}) has {LABEL_FIELD} {json.dumps(label)}, not one "
                'choice; the labeling config must use choice="single"'
            )
        if _first_annotation(annotations, entry.get(ID_COLUMN), item_id, label.strip()):
            rows.append(AnnotationRow(position, item_id, label.strip()))
    return AnnotatorFile(path, "label-studio-json-min", tuple(rows), tuple(not_annotated))


def _first_annotation(seen: set[tuple[Any, str, str]], task_id: Any, item_id: str, label: str) -> bool:
    """False for a repeat of a Label Studio task's choice (annotators agreeing), True the first time."""
    key = (task_id, item_id, label)
    if key in seen:
        return False
    seen.add(key)
    return True

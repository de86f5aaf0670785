"""The versioned label store, `<project>/labels/`: what annotators returned, round by round.

    labels/round-NNN.csv   `id,label`, sorted by id: the labels returned for round NNN's batch
    labels/labels.csv      `id,label,round`, sorted by id: the merged view, regenerated from the round files

The round files are the truth (and what `labels_version` hashes); `labels.csv` is derived and rewritten
whenever it disagrees with them. A label once stored is never changed by an import: relabelling an
id is refused, so a label paid for keeps its round and its value.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import re
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

from bilaf import artifacts
from bilaf.annotation.formats import AnnotationRow, describe_rows
from bilaf.errors import InvalidInputError

MERGED_NAME = "labels.csv"
ROUND_COLUMNS = ("id", "label")
MERGED_COLUMNS = ("id", "label", "round")
_ROUND_FILE = re.compile(r"round-(\d{3,})\.csv")


@dataclasses.dataclass(frozen=True)
class ImportReport:
    """What one import changed: labels new to the store, labels it already held, what is still missing."""

    round_number: int
    added: int
    already_known: int
    labels_total: int  # labels in the store after the import, all rounds
    batch_unlabeled: int  # items of this round's batch still without a label
    version: str  # labels_version after the import


class _StoredRow(NamedTuple):
    file: Path
    line: int
    id: str
    label: str
    round: int

    def where(self) -> str:
        return f"{self.file.name} row {self.line} ({self.id})"


def round_file(store_dir: Path, round_number: int) -> Path:
    return Path(store_dir) / f"round-{round_number:03d}.csv"


def labels_version(store_dir: Path) -> str:
    """sha256 (16 hex) of the round files' canonical content (round, id, label), not of their bytes.

    Any edit of a label changes it; reordering rows does not. An absent store and an empty one share it.
    """
    canonical = sorted((row.round, row.id, row.label) for row in _read_store(Path(store_dir)))
    return hashlib.sha256(json.dumps(canonical).encode()).hexdigest()[:16]


def load_labels(
    store_dir: Path, *, pool_ids: Collection[str], classes: Collection[str], batches: Mapping[int, Collection[str]]
) -> dict[str, str]:
    """The merged labels (id -> class name, sorted by id), re-validating the round files as they are on disk.

    `batches` maps each stored round to its batch ids. An edit that breaks a rule (unknown id or
    class, an id outside its round's batch, an id labelled twice) is a ValueError naming file and row.
    `labels.csv` is rewritten when it disagrees with the round files.
    """
    store_dir = Path(store_dir)
    stored = _read_store(store_dir)
    problems = _problems_in_store(stored, set(pool_ids), set(classes), batches)
    if problems:
        raise InvalidInputError(f"label store {store_dir} is inconsistent: {'; '.join(problems)}")
    if store_dir.is_dir():
        _write_merged(store_dir, stored)
    return {row.id: row.label for row in sorted(stored, key=lambda row: row.id)}


def ensure_store(store_dir: Path) -> None:
    """Create the store (an empty merged view) if absent, so DVC can track it before any label arrives."""
    store_dir = Path(store_dir)
    store_dir.mkdir(parents=True, exist_ok=True)
    _write_merged(store_dir, _read_store(store_dir))


def import_labels(
    store_dir: Path,
    rows: Iterable[AnnotationRow],
    round_number: int,
    *,
    pool_ids: Collection[str],
    batch_ids: Collection[str],
    classes: Collection[str],
) -> ImportReport:
    """Add round `round_number`'s labels to the store after checking every row; nothing is written on error.

    A row whose id is stored already with the same label (in any round) is "already known", so re-importing
    a file, or a cumulative export, is a no-op. Refused, all at once, naming rows: ids not in the pool,
    ids not in this round's batch, unknown classes, an id in more than one row of the file (with
    different labels: a conflict) and an id stored with another label (a relabel). The store itself is
    checked for shape and repeated ids here, in full by `load_labels`.
    """
    if round_number < 1:
        raise InvalidInputError(f"round must be a positive integer, got {round_number}")
    store_dir = Path(store_dir)
    artifacts.remove_temporaries(store_dir)  # what a killed import left half-written
    stored = _read_store(store_dir)
    duplicated = _duplicated_ids(stored)
    if duplicated:
        raise InvalidInputError(f"label store {store_dir} is inconsistent: {duplicated}; fix it before importing")
    stored_by_id = {row.id: row for row in stored}
    pool, batch, known_classes = set(pool_ids), set(batch_ids), set(classes)
    unknown_ids, outside_batch, unknown_classes, relabels = [], [], [], []
    new_labels: dict[str, str] = {}
    file_labels: dict[str, dict[str, list[int]]] = {}
    for row in rows:
        file_labels.setdefault(row.item_id, {}).setdefault(row.label, []).append(row.row_number)
        where = f"row {row.row_number} ({row.item_id})"
        previous = stored_by_id.get(row.item_id)
        if row.item_id not in pool:
            unknown_ids.append(where)
        elif previous is not None:
            if previous.label != row.label:
                relabels.append(f"{where} {row.label!r}, stored {previous.label!r} in {previous.file.name}")
        elif row.item_id not in batch:
            outside_batch.append(where)
        elif row.label not in known_classes:
            unknown_classes.append(f"{where} {row.label!r}")
        else:
            new_labels[row.item_id] = row.label
    conflicts = [
        f"{item_id} ({', '.join(f'row {numbers[0]} {label!r}' for label, numbers in labels.items())})"
        for item_id, labels in file_labels.items()
        if len(labels) > 1
    ]
    repeats = [
        f"{item_id} (rows {', '.join(map(str, numbers))})"
        for item_id, labels in file_labels.items()
        if len(labels) == 1
        for numbers in labels.values()
        if len(numbers) > 1
    ]
    problems = [
        f"{len(items)} {what}: {describe_rows(items)}"
        for what, items in (
            ("row(s) with ids not in the pool", unknown_ids),
            (f"row(s) with ids not in round {round_number}'s batch", outside_batch),
            (f"row(s) with unknown classes (known: {', '.join(sorted(known_classes)) or 'none'})", unknown_classes),
            ("id(s) given different labels within the file", conflicts),
            ("id(s) listed more than once in the file", repeats),
            ("row(s) relabel a stored id (a stored label is never changed)", relabels),
        )
        if items
    ]
    if problems:
        raise InvalidInputError("; ".join(problems))

    already_known = sum(1 for item_id in file_labels if item_id in stored_by_id)
    if new_labels:
        this_round = {row.id: row.label for row in stored if row.round == round_number} | new_labels
        artifacts.write_if_changed(
            round_file(store_dir, round_number), _csv_text(ROUND_COLUMNS, sorted(this_round.items())).encode()
        )
        stored = _read_store(store_dir)
    labelled = {row.id for row in stored}
    if store_dir.is_dir():
        _write_merged(store_dir, stored)
    return ImportReport(
        round_number=round_number,
        added=len(new_labels),
        already_known=already_known,
        labels_total=len(labelled),
        batch_unlabeled=len(batch - labelled),
        version=labels_version(store_dir),
    )


def _round_files(store_dir: Path) -> dict[int, Path]:
    """Round number -> round file; a `round-*.csv` not named round-NNN.csv (NNN >= 001) is refused."""
    files = {}
    for path in sorted(store_dir.glob("round-*.csv")) if store_dir.is_dir() else []:
        match = _ROUND_FILE.fullmatch(path.name)
        if match is None or int(match.group(1)) < 1:
            raise InvalidInputError(f"{path}: not a round file name (round-NNN.csv, NNN from 001); rename or remove it")
        files[int(match.group(1))] = path
    return files


def _read_store(store_dir: Path) -> list[_StoredRow]:
    """Every row of every round file, checked for shape: header `id,label`, two non-empty fields."""
    stored = []
    for number, path in sorted(_round_files(store_dir).items()):
        reader = csv.reader(io.StringIO(path.read_text(encoding="utf-8")))
        header = next(reader, [])
        if tuple(header) != ROUND_COLUMNS:
            raise InvalidInputError(f"{path}: header must be `{','.join(ROUND_COLUMNS)}`, found `{','.join(header)}`")
        malformed = []
        for fields in reader:
            if len(fields) != len(ROUND_COLUMNS) or not all(field.strip() for field in fields):
                malformed.append(f"row {reader.line_num} {','.join(fields)!r}")
            else:
                stored.append(_StoredRow(path, reader.line_num, fields[0].strip(), fields[1].strip(), number))
        if malformed:
            raise InvalidInputError(
                f"{path}: {len(malformed)} row(s) are not `id,label` with both set: {describe_rows(malformed)}"
            )
    return stored


def _duplicated_ids(stored: list[_StoredRow]) -> str:
    """Ids stored more than once (within a file or across rounds), named by file and row; '' if none."""
    rows_by_id: dict[str, list[_StoredRow]] = {}
    for row in stored:
        rows_by_id.setdefault(row.id, []).append(row)
    repeated = [
        " and ".join(f"{row.file.name} row {row.line}" for row in rows) + f" ({item_id})"
        for item_id, rows in rows_by_id.items()
        if len(rows) > 1
    ]
    return f"{len(repeated)} id(s) stored more than once: {describe_rows(repeated)}" if repeated else ""


def _problems_in_store(
    stored: list[_StoredRow], pool: set[str], classes: set[str], batches: Mapping[int, Collection[str]]
) -> list[str]:
    """Every rule a round file can break, one message per rule, naming file and row."""
    batch_sets = {number: set(ids) for number, ids in batches.items()}
    checks = (
        ("row(s) with ids not in the pool", [row.where() for row in stored if row.id not in pool]),
        (
            "row(s) with ids not in their round's batch",
            [row.where() for row in stored if row.round in batch_sets and row.id not in batch_sets[row.round]],
        ),
        (
            f"row(s) with unknown classes (known: {', '.join(sorted(classes)) or 'none'})",
            [f"{row.where()} {row.label!r}" for row in stored if row.label not in classes],
        ),
        (
            "round file(s) whose round has no batch",
            sorted({row.file.name for row in stored if row.round not in batch_sets}),
        ),
    )
    problems = [f"{len(items)} {what}: {describe_rows(items)}" for what, items in checks if items]
    duplicated = _duplicated_ids(stored)
    return problems + [duplicated] if duplicated else problems


def _write_merged(store_dir: Path, stored: list[_StoredRow]) -> None:
    merged = sorted((row.id, row.label, row.round) for row in stored)
    artifacts.write_if_changed(store_dir / MERGED_NAME, _csv_text(MERGED_COLUMNS, merged).encode())


def _csv_text(columns: tuple[str, ...], rows: Iterable[tuple]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return buffer.getvalue()

"""The pool: a content-addressed collection of images that only grows.

A *pool directory* holds::

    <data_dir>/manifest.csv                id, path, label, class_name, split, origin; sorted by id
    <data_dir>/images/<split>/<id>.png     copies, only for sources that are not files (IDX, CIFAR)
    <data_dir>/pool_report.json            what the last sync or ingest scanned, added and skipped

An item's id is the content hash of its normalised pixels (:func:`image_id`). Once in the
manifest an item keeps its id, split, label and path: :func:`sync_pool` (the configured source) and
:func:`ingest_folder` (a folder of new files) only add rows, so images already sent to annotators
never disappear and the test split never changes under a trained model. Images from a folder are
referenced where they are (``path`` relative to ``data_dir`` inside the project, absolute outside),
never copied. Everything written is byte-for-byte reproducible (no timestamps, rows sorted by id),
and :func:`pool_version` hashes what the pool holds, not where the files lie.

Sizes from a source are drawn in a *nested stratified order* (:func:`nested_stratified_order`):
every prefix of the order is stratified, and the pool of size n is the first n items of it, so
growing a pool keeps every earlier item and the class shares stay within one of proportional.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from bilaf import choices, defaults
from bilaf.artifacts import remove_temporaries, write_if_changed
from bilaf.errors import InvalidInputError, MissingFileError
from bilaf.features.images import UnreadableImageError, png_bytes
from bilaf.features.sources import SPLITS, ImageFolderSource, ImageSource, open_source
from bilaf.progress import Progress

__all__ = [
    "DEFAULT_TEST_SIZE",
    "DEFAULT_TRAIN_SIZE",
    "MANIFEST_COLUMNS",
    "MANIFEST_NAME",
    "ON_UNREADABLE",
    "REPORT_NAME",
    "ManifestRow",
    "PoolReport",
    "ingest_folder",
    "nested_stratified_order",
    "pool_version",
    "read_manifest",
    "sync_pool",
]

DEFAULT_TRAIN_SIZE = defaults.TRAIN_SIZE
DEFAULT_TEST_SIZE = defaults.TEST_SIZE
MANIFEST_NAME = "manifest.csv"
REPORT_NAME = "pool_report.json"
IMAGES_DIR = "images"
MANIFEST_COLUMNS = ("id", "path", "label", "class_name", "split", "origin")
ON_UNREADABLE = choices.ON_UNREADABLE
_VERSION_LENGTH = 16
_LISTED_IN_ERRORS = 10


class ManifestRow(NamedTuple):
    """One pool item as ``manifest.csv`` stores it."""

    id: str
    path: str  # relative to data_dir, or absolute
    label: int | None  # index into the pool's class list; None: unlabelled
    class_name: str  # "" when unlabelled
    split: str
    origin: str  # where it came from: "fashion-mnist:train/00042", "folder:<root>:<file>"; "" if unknown


@dataclass
class PoolReport:
    """What one :func:`sync_pool` or :func:`ingest_folder` did; ``to_json()`` is ``pool_report.json``.

    Every scanned image ends up in the pool, a duplicate or unreadable (a sync also leaves images
    beyond the requested sizes out); every other file of a folder is listed as ignored. A sync's
    file records the state it leaves (``selected``), not what it added, so that re-running it with
    the same inputs rewrites nothing; an ingest's file records what it added.
    """

    action: str  # "sync" or "ingest"
    source: str  # "fashion-mnist", "folder:<root>"...
    parameters: dict[str, Any]
    scanned: int
    added: dict[str, int]
    selected: dict[str, int]  # per split, the pool's items from this source after this call
    items: dict[str, int]  # per split, the whole pool after this call
    version: str  # pool_version after this call
    duplicates: list[dict[str, str]] = field(default_factory=list)
    unreadable: list[dict[str, str]] = field(default_factory=list)
    ignored: list[dict[str, str]] = field(default_factory=list)
    files_written: int = 0

    @property
    def num_added(self) -> int:
        return sum(self.added.values())

    def to_json(self) -> str:
        counts = {
            "scanned": self.scanned,
            "duplicates": len(self.duplicates),
            "unreadable": len(self.unreadable),
            "ignored": len(self.ignored),
            "items": self.items,
        }
        if self.action == "sync":
            counts["selected"] = self.selected
        else:
            counts["added"] = self.added
        content = {
            "action": self.action,
            "source": self.source,
            "parameters": self.parameters,
            "pool_version": self.version,
            "counts": counts,
            "duplicates": self.duplicates,
            "unreadable": self.unreadable,
            "ignored": self.ignored,
        }
        return json.dumps(content, indent=2, sort_keys=True) + "\n"


# --------------------------------------------------------------------------------------------
# The nested stratified order
# --------------------------------------------------------------------------------------------


def nested_stratified_order(labels: Sequence[int | None], seed: int, split_index: int) -> list[int]:
    """A seeded order of ``range(len(labels))`` in which every prefix is stratified by label.

    Per class (sorted; unlabelled items are a class of their own) a random permutation of its
    members; the member at rank r of n_c gets the key (r + 0.5) / n_c; items are ordered by (key,
    class). In any prefix of length n each class then holds within one of n * n_c / N items, and a
    longer prefix contains every shorter one. ``split_index`` (0 train, 1 test) gives each split
    its own random stream: ``np.random.default_rng([seed, split_index])``.
    """
    classes = np.array([-1 if label is None else int(label) for label in labels], dtype=np.int64)
    rng = np.random.default_rng([seed, split_index])
    keys = np.empty(len(classes), dtype=np.float64)
    for value in np.unique(classes):
        members = np.flatnonzero(classes == value)
        keys[members[rng.permutation(len(members))]] = (np.arange(len(members)) + 0.5) / len(members)
    return np.lexsort((classes, keys)).tolist()


# --------------------------------------------------------------------------------------------
# Scanning a source
# --------------------------------------------------------------------------------------------


@dataclass
class _Scan:
    """Ids of a source's records and what could not be used."""

    origins: list[str]
    ids: list[str | None]  # None: unreadable
    usable: list[int]  # readable records, the first of each id, in record order
    unreadable: list[dict[str, str]]
    duplicates: list[dict[str, str]]  # records whose pixels an earlier record of the source has
    ignored: list[dict[str, str]]


def _source_name(source: ImageSource, data_dir: Path) -> str:
    if isinstance(source, ImageFolderSource):
        return f"folder:{_manifest_path(source.root, data_dir)}"
    return source.name


def _scan(source: ImageSource, data_dir: Path, on_unreadable: str) -> _Scan:
    """Hash every record; fail (before anything is written) on unreadable ones if asked to."""
    prefix = _source_name(source, data_dir)
    records = source.records
    origins = [f"{prefix}:{record.name}" for record in records]
    ignored = [{"origin": f"{prefix}:{name}", "reason": reason} for name, reason in source.ignored]
    ids: list[str | None] = [None] * len(records)
    unreadable: list[dict[str, str]] = []
    for index in Progress(range(len(records)), f"scan {prefix}", unit="img"):
        try:
            ids[index] = source.image_id(index)
        except UnreadableImageError as error:
            unreadable.append({"origin": origins[index], "reason": str(error)})
    if unreadable and on_unreadable == "fail":
        listed = "; ".join(f"{u['origin']}: {u['reason']}" for u in unreadable[:_LISTED_IN_ERRORS])
        more = f" (and {len(unreadable) - _LISTED_IN_ERRORS} more)" if len(unreadable) > _LISTED_IN_ERRORS else ""
        raise InvalidInputError(f"{len(unreadable)} unreadable file(s) in {prefix}: {listed}{more}")
    first_by_id: dict[str, int] = {}
    usable: list[int] = []
    duplicates: list[dict[str, str]] = []
    for index, item_id in enumerate(ids):
        if item_id is None:
            continue
        if item_id in first_by_id:
            duplicates.append({"origin": origins[index], "id": item_id, "duplicate_of": origins[first_by_id[item_id]]})
            continue
        first_by_id[item_id] = index
        usable.append(index)
    if not usable:
        first = f", first: {unreadable[0]['origin']}: {unreadable[0]['reason']}" if unreadable else ""
        raise InvalidInputError(f"no readable images in {prefix} ({len(unreadable)} unreadable{first})")
    return _Scan(origins, ids, usable, unreadable, duplicates, ignored)


# --------------------------------------------------------------------------------------------
# Growing the pool
# --------------------------------------------------------------------------------------------


def _check_on_unreadable(on_unreadable: str) -> None:
    if on_unreadable not in ON_UNREADABLE:
        raise InvalidInputError(f"on_unreadable must be one of {ON_UNREADABLE}, got {on_unreadable!r}")


def _check_sizes(sizes: dict[str, int | None], seed: int) -> None:
    for split, size in sizes.items():
        if size is not None and (isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 0):
            raise InvalidInputError(f"data.{split}_size must be a non-negative integer or None, got {size!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InvalidInputError(f"data.seed must be a non-negative integer, got {seed!r}")


@dataclass
class _Draw:
    """Which records of one source a sync adds, split by split."""

    labels: list[int | None]  # the source's label of each record
    split_of: dict[int, str]  # usable record -> its split in the pool, for records this source added
    present: set[int]  # usable records whose pixels are in the pool already, from any origin
    data_dir: Path
    source_name: str
    seed: int
    added: dict[str, list[int]] = field(default_factory=lambda: {split: [] for split in SPLITS})

    def grow(self, split: str, members: list[int], target: int | None, size_key: str) -> None:
        """Add members of ``split`` in nested order until the pool holds ``target`` of them. Sizes
        count what this source added: the same pixels ingested from a folder are in the pool
        already (never added twice) but are not this source's items."""
        taken = self.present | {index for chosen in self.added.values() for index in chosen}
        held = sum(1 for index in members if self.split_of.get(index) == split)
        available = [index for index in members if index not in taken]
        target = held + len(available) if target is None else target
        if target < held:
            raise InvalidInputError(
                f"pools only grow: {size_key} {target:,} is below the {held:,} {split} items "
                f"from {self.source_name} already in {self.data_dir}/"
            )
        if target > held + len(available):
            raise InvalidInputError(
                f"{size_key} {target:,} exceeds the {held + len(available):,} usable {split} "
                f"items of {self.source_name}"
            )
        wanted = target - held
        order = nested_stratified_order([self.labels[i] for i in members], self.seed, SPLITS.index(split))
        for position in order:
            if len(self.added[split]) == wanted:
                break
            if members[position] not in taken:
                self.added[split].append(members[position])


def sync_pool(
    data_dir: Path,
    source: str,
    *,
    root: Path | None = None,
    train_size: int | None = DEFAULT_TRAIN_SIZE,
    test_size: int | None = DEFAULT_TEST_SIZE,
    seed: int = 0,
    on_unreadable: str = "skip",
) -> PoolReport:
    """Bring ``data_dir`` up to ``train_size`` + ``test_size`` items of ``source``, incrementally.

    Items already in the pool stay (id, split, path); missing ones are added in the nested
    stratified order of their split, so the result is the first n of that order whatever sizes
    earlier syncs asked for. Sizes count this source's items only; None takes every item of a
    split the source fixes. A source without splits (a plain image folder) gets its test items
    first: ``test_size`` of them, or what ``train_size`` leaves when ``test_size`` is None (none
    when both are None); train then draws from the rest. A size below what the pool already holds
    is a ValueError: pools only grow. Unreadable images are reported and skipped, or fail the
    call before anything is written (``on_unreadable="fail"``); identical images collapse to the
    first one. Re-running with unchanged inputs rewrites no file.
    """
    sizes = {"train": train_size, "test": test_size}
    _check_sizes(sizes, seed)
    _check_on_unreadable(on_unreadable)
    data_dir = Path(data_dir)
    remove_temporaries(data_dir)  # what a killed sync or ingest left half-written
    image_source = open_source(source, root)
    scan = _scan(image_source, data_dir, on_unreadable)
    rows = _existing_rows(data_dir)
    records = image_source.records
    name = _source_name(image_source, data_dir)
    present = {i for i in scan.usable if scan.ids[i] in rows}
    # A manifest from before origins existed was built from the configured source alone.
    own = {i for i in present if rows[scan.ids[i]].origin in ("", f"{name}:{records[i].name}")}
    draw = _Draw(
        [record.label for record in records], {i: rows[scan.ids[i]].split for i in own}, present, data_dir, name, seed
    )
    given = {record.split for record in records}
    if None in given and len(given) > 1:
        raise InvalidInputError(f"source {draw.source_name} gives a split to some items but not to others")
    if None not in given:
        for split in SPLITS:
            members = [i for i in scan.usable if records[i].split == split]
            draw.grow(split, members, sizes[split], f"data.{split}_size")
    else:  # the source fixes no split: test is drawn first, train from the rest
        if test_size is not None:
            draw.grow("test", scan.usable, test_size, "data.test_size")
        elif train_size is not None:
            if train_size > len(scan.usable):
                raise InvalidInputError(
                    f"data.train_size {train_size:,} exceeds the {len(scan.usable):,} usable "
                    f"items of {draw.source_name}"
                )
            draw.grow(
                "test", scan.usable, len(scan.usable) - train_size, "data.test_size (null: what data.train_size leaves)"
            )
        draw.grow("train", scan.usable, train_size, "data.train_size")

    class_labels = _class_labels(rows.values(), image_source, [i for chosen in draw.added.values() for i in chosen])
    for split, indices in draw.added.items():
        for index in indices:
            row = _new_row(image_source, index, scan.ids[index], split, scan.origins[index], class_labels, data_dir)
            rows[row.id] = row
    # Copies (sources that are not files) of added items, and of present ones whose copy is gone.
    added_ids = {scan.ids[index] for indices in draw.added.values() for index in indices}
    to_write: list[tuple[int, Path]] = []
    for index in scan.usable:
        row = rows.get(scan.ids[index])
        if (
            records[index].file is None
            and row is not None
            and _is_copy(row)
            and (row.id in added_ids or not (data_dir / row.path).is_file())
        ):
            to_write.append((index, data_dir / row.path))
    files_written = 0
    for index, target in Progress(to_write, "write images", unit="img"):
        files_written += write_if_changed(target, png_bytes(image_source.load(index)))
    report = PoolReport(
        action="sync",
        source=draw.source_name,
        parameters={
            "source": source,
            "root": None if root is None else str(root),
            "train_size": train_size,
            "test_size": test_size,
            "seed": seed,
            "on_unreadable": on_unreadable,
        },
        scanned=len(records),
        added={split: len(indices) for split, indices in draw.added.items()},
        selected=_selected(scan, rows),
        items=_split_counts(rows.values()),
        version=_version(rows.values()),
        duplicates=scan.duplicates,
        unreadable=scan.unreadable,
        ignored=scan.ignored,
    )
    report.files_written = files_written + _write_pool_files(data_dir, rows.values(), report)
    return report


def ingest_folder(data_dir: Path, folder: Path, *, split: str = "train", on_unreadable: str = "skip") -> PoolReport:
    """Add every image under ``folder`` to the pool in ``data_dir``, referenced where it is.

    Class sub-folders give labels (loose files are unlabelled), as in :class:`ImageFolderSource`;
    every new image goes to ``split``. An image whose id is already in the pool is a duplicate
    (reported with what it duplicates, not added), unreadable files are reported with the reason
    (or fail the call before anything is written, ``on_unreadable="fail"``), other files are
    ignored and listed. Ingesting the same folder twice adds nothing the second time.
    """
    _check_on_unreadable(on_unreadable)
    data_dir = Path(data_dir)
    remove_temporaries(data_dir)  # what a killed sync or ingest left half-written
    image_source = ImageFolderSource(folder, split=split)
    scan = _scan(image_source, data_dir, on_unreadable)
    rows = _existing_rows(data_dir)
    duplicates = list(scan.duplicates)
    new = []
    for index in scan.usable:
        kept = rows.get(scan.ids[index])
        if kept is None:
            new.append(index)
        else:
            duplicates.append({"origin": scan.origins[index], "id": kept.id, "duplicate_of": kept.origin or kept.path})
    class_labels = _class_labels(rows.values(), image_source, new)
    for index in new:
        row = _new_row(image_source, index, scan.ids[index], split, scan.origins[index], class_labels, data_dir)
        rows[row.id] = row
    report = PoolReport(
        action="ingest",
        source=_source_name(image_source, data_dir),
        parameters={"folder": _manifest_path(Path(folder), data_dir), "split": split, "on_unreadable": on_unreadable},
        scanned=len(image_source.records),
        added={name: len(new) if name == split else 0 for name in SPLITS},
        selected=_selected(scan, rows),
        items=_split_counts(rows.values()),
        version=_version(rows.values()),
        duplicates=sorted(duplicates, key=lambda entry: entry["origin"]),
        unreadable=scan.unreadable,
        ignored=scan.ignored,
    )
    report.files_written = _write_pool_files(data_dir, rows.values(), report)
    return report


def _class_labels(rows: Iterable[ManifestRow], source: ImageSource, indices: Sequence[int]) -> dict[str, int]:
    """Pool label of each class among the records ``indices``: the pool's own where it has the class
    (labels stay consistent across ingests), else the next free index, in the source's class order."""
    labels = {row.class_name: row.label for row in rows if row.label is not None}
    next_label = max(labels.values(), default=-1) + 1
    for source_label in sorted({source.records[i].label for i in indices} - {None}):
        if source.classes[source_label] not in labels:
            labels[source.classes[source_label]] = next_label
            next_label += 1
    return labels


def _new_row(
    source: ImageSource, index: int, item_id: str, split: str, origin: str, class_labels: dict[str, int], data_dir: Path
) -> ManifestRow:
    record = source.records[index]
    class_name = "" if record.label is None else source.classes[record.label]
    path = _manifest_path(record.file, data_dir) if record.file is not None else _copy_path(split, item_id)
    return ManifestRow(item_id, path, class_labels.get(class_name), class_name, split, origin)


def _copy_path(split: str, item_id: str) -> str:
    return f"{IMAGES_DIR}/{split}/{item_id}.png"


def _is_copy(row: ManifestRow) -> bool:
    return row.path == _copy_path(row.split, row.id)


def _manifest_path(file: Path, data_dir: Path) -> str:
    """How the manifest names a file: relative to ``data_dir`` when it lies in the project folder
    (``data_dir``'s parent), so the project can move; absolute otherwise."""
    absolute = Path(os.path.abspath(file))
    data_absolute = Path(os.path.abspath(data_dir))
    if absolute.is_relative_to(data_absolute.parent):
        return Path(os.path.relpath(absolute, data_absolute)).as_posix()
    return absolute.as_posix()


def _selected(scan: _Scan, rows: dict[str, ManifestRow]) -> dict[str, int]:
    """Per split, how many of the scanned source's images the pool holds."""
    return _split_counts(rows[scan.ids[index]] for index in scan.usable if scan.ids[index] in rows)


def _split_counts(rows: Iterable[ManifestRow]) -> dict[str, int]:
    counts = dict.fromkeys(SPLITS, 0)
    for row in rows:
        counts[row.split] += 1
    return counts


# --------------------------------------------------------------------------------------------
# Writing and reading the manifest
# --------------------------------------------------------------------------------------------


def _manifest_bytes(rows: Iterable[ManifestRow]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    for row in sorted(rows):
        writer.writerow(row._replace(label="" if row.label is None else row.label))
    return buffer.getvalue().encode()


def _write_pool_files(data_dir: Path, rows: Iterable[ManifestRow], report: PoolReport) -> int:
    """Write the manifest, then the report (each atomically, each only when changed)."""
    written = write_if_changed(data_dir / MANIFEST_NAME, _manifest_bytes(rows))
    return written + write_if_changed(data_dir / REPORT_NAME, report.to_json().encode())


def _version(rows: Iterable[ManifestRow]) -> str:
    lines = sorted(f"{row.id}\t{row.split}\t{row.class_name}\n" for row in rows)
    return hashlib.sha256("".join(lines).encode()).hexdigest()[:_VERSION_LENGTH]


def pool_version(data_dir: Path) -> str:
    """The pool's data version: sha256 (16 hex) of its sorted (id, split, class_name) rows.

    Paths and origins are not part of it: moving the project or the referenced files keeps it.
    """
    return _version(_rows_of(read_manifest(data_dir)))


def _rows_of(frame: pd.DataFrame) -> list[ManifestRow]:
    return [
        ManifestRow(
            row.id, row.path, None if pd.isna(row.label) else int(row.label), row.class_name, row.split, row.origin
        )
        for row in frame.itertuples(index=False)
    ]


def _existing_rows(data_dir: Path) -> dict[str, ManifestRow]:
    """The pool's rows by id; empty when ``data_dir`` holds no manifest yet."""
    if not (Path(data_dir) / MANIFEST_NAME).is_file():
        return {}
    return {row.id: row for row in _rows_of(read_manifest(data_dir))}


def read_manifest(data_dir: Path) -> pd.DataFrame:
    """The pool's manifest: id, path, label (nullable Int64), class_name, split, origin.

    A manifest written before ``origin`` existed reads with ``origin`` "". Columns, splits, unique
    ids and consistent (label, class_name) pairs are checked.
    """
    data_dir = Path(data_dir)
    hint = "run `bilaf data sync` or `bilaf ingest DIR` first"
    if not data_dir.is_dir():
        raise MissingFileError(f"data directory {data_dir} does not exist; {hint}")
    manifest = data_dir / MANIFEST_NAME
    if not manifest.is_file():
        raise MissingFileError(f"no {MANIFEST_NAME} in {data_dir}; {hint}")
    frame = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    if "origin" not in frame.columns:
        frame["origin"] = ""
    missing = [column for column in MANIFEST_COLUMNS if column not in frame.columns]
    unexpected = [column for column in frame.columns if column not in MANIFEST_COLUMNS]
    if missing or unexpected:
        raise InvalidInputError(f"{manifest} has columns {list(frame.columns)}; expected {list(MANIFEST_COLUMNS)}")
    bad_label = frame["label"][(frame["label"] != "") & ~frame["label"].str.fullmatch(r"\d+")]
    if len(bad_label):
        raise InvalidInputError(f"{manifest}: label {bad_label.iloc[0]!r} is not a class index")
    frame["label"] = pd.array([int(value) if value else None for value in frame["label"]], dtype="Int64")
    bad_split = frame["split"][~frame["split"].isin(SPLITS)]
    if len(bad_split):
        raise InvalidInputError(f"{manifest}: split {bad_split.iloc[0]!r} is not one of {SPLITS}")
    if frame["id"].duplicated().any():
        raise InvalidInputError(f"{manifest} lists id {frame['id'][frame['id'].duplicated()].iloc[0]} twice")
    if (frame["label"].isna() != (frame["class_name"] == "")).any():
        row = frame[frame["label"].isna() != (frame["class_name"] == "")].iloc[0]
        raise InvalidInputError(f"{manifest}: item {row['id']} has a label without a class name or the reverse")
    pairs = frame.loc[frame["label"].notna(), ["label", "class_name"]].drop_duplicates()
    for column in ("label", "class_name"):
        clash = pairs[pairs[column].duplicated(keep=False)]
        if len(clash):
            raise InvalidInputError(
                f"{manifest}: {column} {clash[column].iloc[0]!r} stands for several classes: "
                f"{sorted(map(str, clash.itertuples(index=False)))}"
            )
    return frame[list(MANIFEST_COLUMNS)]

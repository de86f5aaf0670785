"""Atomic, deterministic writing: the one place files and folders are replaced.

A writer writes into a temporary sibling and only a finished output replaces the current one, so a
failed or killed run never leaves a half-written file as current. Stages use `atomic_output`;
single files (pool images, manifests, label files, embedding shards) use `write_atomic` or
`write_if_changed`.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from bilaf.errors import InvalidInputError


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it replaces `path` (file or folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    target = staging / path.name
    try:
        yield target
        if not target.exists():
            raise RuntimeError(f"stage produced no output at {path}")
        if path.is_dir() and not path.is_symlink():
            retired = staging / f"{path.name}.old"
            os.replace(path, retired)
        os.replace(target, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def temporary_sibling(path: Path) -> Path:
    """Where this process writes ``path`` before replacing it: a hidden, pid-named sibling, so two
    processes writing the same file (a shared embedding cache) never write into each other's."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield `temporary_sibling(path)` to write; on success it replaces ``path``, on error it is
    deleted. Unlike `atomic_output` it leaves other writers' temporaries alone."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_sibling(path)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` in one step (a reader sees the old bytes or the new)."""
    with atomic_file(path) as temporary:
        temporary.write_bytes(data)


def write_if_changed(path: Path, data: bytes) -> bool:
    """`write_atomic` unless ``path`` holds exactly ``data`` already (its mtime then stays); returns
    whether it wrote."""
    path = Path(path)
    try:
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    write_atomic(path, data)
    return True


def remove_leftovers(path: Path) -> None:
    """Delete what a killed writer of ``path`` left half-done: its staging folders beside it, and
    temporary files inside it. Safe because one writer at a time holds the project (the lock)."""
    path = Path(path)
    for leftover in path.parent.glob(f".{path.name}.*"):
        shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
    remove_temporaries(path)


def remove_temporaries(folder: Path) -> None:
    """Delete the `atomic_file` temporaries a killed writer left anywhere under ``folder`` (the pool's
    images, the label files); only for a folder whose writer holds the project lock."""
    folder = Path(folder)
    if folder.is_dir():
        for leftover in folder.rglob(".*.tmp-*"):
            shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()


def write_json(path: Path, payload: Any) -> None:
    """Canonical JSON (sorted keys, fixed separators, trailing newline) for stable hashes."""
    Path(path).write_text(json.dumps(payload, indent=2, sort_keys=True, allow_nan=False) + "\n")


def read_json(path: Path) -> Any:
    """A JSON file's content; a file that is not JSON (truncated, edited) is named in the error."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise InvalidInputError(f"{path} is not valid JSON ({error}): was it edited or cut short?") from None


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({column: _csv_value(row.get(column)) for column in columns})


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return value

"""Annotation rounds: the ledger of every batch sent to annotators (design: docs/rounds.md).

Layout, in the project folder::

    rounds/ledger.json               the open round and every frozen one (inputs, files, hashes)
    rounds/open.json                 what the open round knows: labeled items, pending items
    rounds/round-NNN/                a frozen round: batch.csv (what was sent) and the selection,
                                     model and metrics of that round as they were
    artifacts/annotation_batch/      the open round's latest batch: to_annotate.csv, round.json

A round is identified by its inputs, the pool version and the labels version. While they stay
the same the round stays open: changing its parameters or code re-runs its selection and what
follows, and its batch is replaced. When either changes after the round's batch was issued (new
images arrived, annotators returned labels, a label file was edited), the round is frozen: its
files are copied here, its unlabeled items become pending, and the next round picks around them.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from bilaf import artifacts
from bilaf.errors import InvalidInputError
from bilaf.stages.table import STAGES

ROUNDS_DIR = STAGES["round"].output
LEDGER_NAME = "ledger.json"
OPEN_NAME = "open.json"
BATCH_NAME = "batch.csv"
ROUND_MARKER = "round.json"
ISSUED_BATCH_DIR = Path(STAGES["annotation_batch"].output)
ISSUED_BATCH_NAME = "to_annotate.csv"
# What a frozen round keeps of the open round's outputs: (stage, file in its output or "" for the
# whole output, name in the round).
_KEPT = (
    ("annotation_batch", ISSUED_BATCH_NAME, BATCH_NAME),
    ("annotation_batch", "label_studio_tasks.json", "label_studio_tasks.json"),
    ("boundary_set", "selection.csv", "selection.csv"),
    ("evaluation", "metrics.json", "metrics.json"),
    ("finetuned_model", "", "model"),
)
FROZEN_FILES = tuple((Path(STAGES[stage].output) / file, name) for stage, file, name in _KEPT)


def round_dir(root: Path, number: int) -> Path:
    return Path(root) / ROUNDS_DIR / f"round-{number:03d}"


def output_round(path: Path) -> int | None:
    """The round a stage output (a folder with round.json) was made for; None when absent."""
    marker = Path(path) / ROUND_MARKER
    return int(artifacts.read_json(marker)["round"]) if marker.is_file() else None


def issued_batch(root: Path) -> dict[str, Any] | None:
    """The open round's latest issued batch marker (round number and inputs), None if none."""
    marker = Path(root) / ISSUED_BATCH_DIR / ROUND_MARKER
    return artifacts.read_json(marker) if marker.is_file() else None


@dataclass
class Ledger:
    """The open round's number and inputs, and every frozen round's record."""

    open_round: int = 1
    inputs: dict[str, str] = field(default_factory=dict)
    frozen: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def load(cls, root: Path) -> Ledger:
        path = Path(root) / ROUNDS_DIR / LEDGER_NAME
        if not path.is_file():
            return cls()
        content = artifacts.read_json(path)
        return cls(
            open_round=int(content["open"]["round"]),
            inputs=dict(content["open"]["inputs"]),
            frozen=list(content["frozen"]),
        )

    def to_json(self) -> dict[str, Any]:
        return {"open": {"round": self.open_round, "inputs": self.inputs}, "frozen": self.frozen}


def batch_files(root: Path) -> dict[int, Path]:
    """The batch file of every round that has one: frozen copies, and the open round's issued batch."""
    root = Path(root)
    found = {
        int(path.name.removeprefix("round-")): path / BATCH_NAME
        for path in sorted((root / ROUNDS_DIR).glob("round-*"))
        if (path / BATCH_NAME).is_file()
    }
    issued = issued_batch(root)
    if issued is not None and int(issued["round"]) not in found:
        found[int(issued["round"])] = root / ISSUED_BATCH_DIR / ISSUED_BATCH_NAME
    return found


def batches(root: Path) -> dict[int, list[str]]:
    """Ids of every round that has a batch."""
    return {number: _ids(path) for number, path in batch_files(root).items()}


def round_batch_file(root: Path, number: int) -> Path:
    """Round `number`'s batch file (frozen copy, else the issued batch); ValueError if none."""
    known = batch_files(root)
    if number not in known:
        raise InvalidInputError(
            f"round {number} has no annotation batch (rounds with a batch: "
            f"{', '.join(map(str, sorted(known))) or 'none yet; run the pipeline first'})"
        )
    return known[number]


def round_batch_ids(root: Path, number: int) -> list[str]:
    """Ids of round `number`'s batch; ValueError naming the rounds that have one if it has none."""
    return _ids(round_batch_file(root, number))


def advance(root: Path, inputs: Mapping[str, str]) -> tuple[Ledger, bool]:
    """Bring the ledger up to the current ``inputs``: freeze the open round when its issued batch
    was made from other inputs. Returns (ledger, whether a round was frozen); writes nothing.

    ValueError when the ledger has lost rounds that artifacts still refer to.
    """
    root = Path(root)
    ledger = Ledger.load(root)
    issued = issued_batch(root)
    if issued is not None and int(issued["round"]) > ledger.open_round:
        raise InvalidInputError(
            f"{ISSUED_BATCH_DIR} holds round {issued['round']}'s batch but {ROUNDS_DIR}/"
            f"{LEDGER_NAME} is at round {ledger.open_round}: the ledger was lost or rolled "
            f"back; restore it (`dvc checkout {ROUNDS_DIR}`) before running"
        )
    frozen = issued is not None and int(issued["round"]) == ledger.open_round and dict(issued["inputs"]) != dict(inputs)
    if frozen:
        ledger.frozen.append(
            {
                "round": ledger.open_round,
                "inputs": dict(issued["inputs"]),
                "items": len(_ids(root / ISSUED_BATCH_DIR / ISSUED_BATCH_NAME)),
                "files": _frozen_hashes(root, ledger.open_round),
            }
        )
        ledger.open_round += 1
    ledger.inputs = dict(inputs)
    return ledger, frozen


def write(root: Path, ledger: Ledger, open_state: Mapping[str, Any], freeze_round: int | None) -> None:
    """Write the ledger and the open round's state; copy the round being frozen, if any, first."""
    root = Path(root)
    rounds_dir = root / ROUNDS_DIR
    rounds_dir.mkdir(parents=True, exist_ok=True)
    if freeze_round is not None:
        _copy_round(root, freeze_round)
    with artifacts.atomic_output(rounds_dir / OPEN_NAME) as out:
        artifacts.write_json(out, dict(open_state))
    with artifacts.atomic_output(rounds_dir / LEDGER_NAME) as out:
        artifacts.write_json(out, ledger.to_json())


def _frozen_sources(root: Path, number: int) -> list[tuple[Path, str]]:
    """The open round's outputs that belong to round ``number`` (a folder's round.json, a file's
    folder's round.json), as (path, name in the frozen round)."""
    kept = []
    for source, name in FROZEN_FILES:
        path = root / source
        owner = path if path.is_dir() else path.parent
        if path.exists() and output_round(owner) == number:
            kept.append((path, name))
    return kept


def _frozen_hashes(root: Path, number: int) -> dict[str, str]:
    return {name: _sha256_tree(path) for path, name in _frozen_sources(root, number)}


def _copy_round(root: Path, number: int) -> None:
    target = round_dir(root, number)
    if target.exists():
        raise InvalidInputError(f"{target} exists already: the ledger and {ROUNDS_DIR}/ disagree")
    with artifacts.atomic_output(target) as staging:
        staging.mkdir()
        for path, name in _frozen_sources(root, number):
            (shutil.copytree if path.is_dir() else shutil.copy2)(path, staging / name)


def _sha256_tree(path: Path) -> str:
    """sha256 of a file, or of a folder's relative paths and file contents in sorted order."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if path.is_dir():
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        digest.update(file.read_bytes())
    return digest.hexdigest()


def _ids(path: Path) -> list[str]:
    return pd.read_csv(path, dtype={"id": str}, usecols=["id"])["id"].tolist()

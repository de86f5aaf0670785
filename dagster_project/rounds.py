"""Annotation rounds: the ledger of every batch sent to annotators (design: ../shared/design/ROUNDS.md).

Layout, in the project folder::

    rounds/ledger.json               the open round and every frozen one (inputs, files, hashes)
    rounds/round-NNN/batch.csv       the batch of a frozen round (a copy of to_annotate.csv)
    artifacts/annotation_batch/      the open round's latest batch: to_annotate.csv, round.json

A round is frozen when its inputs (pool version, labels version) change after its batch was issued:
from then on its items are pending until labeled, and the next round picks around them.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from dagster_project import artifacts

ROUNDS_DIR = "rounds"
LEDGER_NAME = "ledger.json"
BATCH_NAME = "batch.csv"
ISSUED_BATCH_DIR = Path("artifacts") / "annotation_batch"
ISSUED_BATCH_NAME = "to_annotate.csv"
ISSUED_ROUND_NAME = "round.json"


def round_dir(root: Path, number: int) -> Path:
    return Path(root) / ROUNDS_DIR / f"round-{number:03d}"


def issued_round(root: Path) -> int | None:
    """The round number of the latest issued batch (artifacts/annotation_batch), None if none."""
    marker = Path(root) / ISSUED_BATCH_DIR / ISSUED_ROUND_NAME
    return int(artifacts.read_json(marker)["round"]) if marker.is_file() else None


def round_batch_ids(root: Path, number: int) -> list[str]:
    """Ids of round `number`'s batch: the frozen copy if the round is frozen, else the issued batch.

    Raises ValueError naming the rounds that have a batch when `number` has none.
    """
    root = Path(root)
    frozen = round_dir(root, number) / BATCH_NAME
    if frozen.is_file():
        return pd.read_csv(frozen, dtype={"id": str})["id"].tolist()
    if issued_round(root) == number:
        return pd.read_csv(root / ISSUED_BATCH_DIR / ISSUED_BATCH_NAME, dtype={"id": str})["id"].tolist()
    known = sorted(int(path.name.removeprefix("round-")) for path in (root / ROUNDS_DIR).glob("round-*")
                   if (path / BATCH_NAME).is_file())
    issued = issued_round(root)
    if issued is not None:
        known = sorted({*known, issued})
    raise ValueError(f"round {number} has no annotation batch "
                     f"(rounds with a batch: {', '.join(map(str, known)) or 'none yet; run the pipeline first'})")

"""The `round` stage: freezes the previous annotation round when the sources changed and records
what the open round knows (`bilaf.rounds`)."""

from __future__ import annotations

from bilaf import rounds
from bilaf.config import Params
from bilaf.stages.labels import GROUND_TRUTH, imported_labels, labels_version
from bilaf.stages.paths import ProjectPaths
from bilaf.stages.table import StageOutcome


def run_round(paths: ProjectPaths, params: Params) -> StageOutcome:
    """Freeze the previous round if the pool or the labels changed since its batch; record what the
    open round knows (labeled and pending items)."""
    from bilaf.features import pool_version, read_manifest

    manifest = read_manifest(paths.data)
    inputs = {"pool_version": pool_version(paths.data), "labels_version": labels_version(paths, params)}
    ledger, froze = rounds.advance(paths.root, inputs)
    batches = {number: ids for number, ids in rounds.batches(paths.root).items() if number < ledger.open_round}
    if params.annotation.labels == GROUND_TRUTH:
        truth = dict(zip(manifest["id"], manifest["class_name"]))
        labeled = {item: truth[item] for ids in batches.values() for item in ids if truth.get(item)}
    else:
        labeled = imported_labels(paths, manifest)
    pending = sorted({item for ids in batches.values() for item in ids} - set(labeled))
    state = {
        "round": ledger.open_round,
        **inputs,
        "labels": params.annotation.labels,
        "labeled": dict(sorted(labeled.items())),
        "pending": pending,
    }
    rounds.write(paths.root, ledger, state, ledger.open_round - 1 if froze else None)
    return StageOutcome(
        metrics={
            "round": ledger.open_round,
            "labeled": len(labeled),
            "pending": len(pending),
            "frozen_rounds": len(ledger.frozen),
        },
        metadata={"round": ledger.open_round, "froze_round": froze, **inputs},
    )

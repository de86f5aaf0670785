"""The labels source: where a round's labels come from (annotators' imported files, or the pool's
ground truth for simulated annotators) and its data version."""

from __future__ import annotations

from bilaf import rounds
from bilaf.config import Params
from bilaf.stages.paths import ProjectPaths
from bilaf.stages.sources import pool_classes

GROUND_TRUTH = "ground-truth"


def labels_version(paths: ProjectPaths, params: Params) -> str:
    """The labels' data version: the content hash of labels/ (constant for simulated annotators)."""
    if params.annotation.labels == GROUND_TRUTH:
        return GROUND_TRUTH
    from bilaf.annotation import labels_version as store_version

    return store_version(paths.labels)


def imported_labels(paths: ProjectPaths, manifest) -> dict[str, str]:
    """The annotators' labels (id -> class name), the round files re-validated as they are on disk
    against the pool and every round's batch (an edit in place that breaks a rule is an error)."""
    from bilaf.annotation import load_labels

    return load_labels(
        paths.labels, pool_ids=set(manifest["id"]), classes=pool_classes(manifest), batches=rounds.batches(paths.root)
    )

"""The `annotation_batch` stage: the round's batch for annotators (CSV, Label Studio tasks) and the
labels training uses."""

from __future__ import annotations

import os

from bilaf import artifacts, rounds
from bilaf.config import Params
from bilaf.stages.labels import GROUND_TRUTH
from bilaf.stages.paths import ProjectPaths, resolve_image
from bilaf.stages.state import RoundKnowledge
from bilaf.stages.table import StageOutcome


def run_annotation_batch(paths: ProjectPaths, params: Params) -> StageOutcome:
    import pandas as pd

    from bilaf.annotation import document_root_for, label_studio_tasks
    from bilaf.features import read_manifest

    known = RoundKnowledge.load(paths)
    manifest = read_manifest(paths.data).set_index("id")
    selection = pd.read_csv(paths.output("boundary_set") / "selection.csv", dtype={"id": str}, keep_default_na=False)
    batch = selection.drop_duplicates("id")
    revealed: dict[str, str] = {}
    if known.labels_mode == GROUND_TRUTH:  # simulated annotators answer the batch at once
        revealed = {item: manifest.at[item, "class_name"] for item in batch["id"] if manifest.at[item, "class_name"]}
    training = {**known.labeled, **revealed}
    rows = [
        {**{column: row[column] for column in BATCH_COLUMNS if column != "labeled"}, "labeled": row["id"] in training}
        for row in batch.to_dict("records")
    ]
    image_paths = {item: resolve_image(paths, manifest.at[item, "path"]) for item in batch["id"]}
    document_root = document_root_for(image_paths.values(), paths.root)
    with artifacts.atomic_output(paths.output("annotation_batch")) as out:
        out.mkdir()
        artifacts.write_csv(out / rounds.ISSUED_BATCH_NAME, rows, BATCH_COLUMNS)
        artifacts.write_json(out / "label_studio_tasks.json", label_studio_tasks(rows, image_paths, document_root))
        # Relative to the project folder, so a moved project keeps byte-identical artifacts.
        artifacts.write_json(
            out / "label_studio.json",
            {
                "document_root": os.path.relpath(document_root, paths.root),
                "note": "start Label Studio with LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT set to this folder (relative "
                "to the project folder) and a Local Files storage on a folder under it holding the images",
            },
        )
        artifacts.write_csv(
            out / "labels.csv", [{"id": item, "label": training[item]} for item in sorted(training)], ["id", "label"]
        )
        artifacts.write_json(
            out / rounds.ROUND_MARKER,
            {
                "round": known.round,
                "inputs": {"pool_version": known.pool_version, "labels_version": known.labels_version},
            },
        )
    return StageOutcome(
        metrics={
            "to_annotate": len(rows),
            "training_labels": len(training),
            "revealed": len(revealed),
            "pending_from_earlier_rounds": len(known.pending),
            "round": known.round,
        },
        metadata={"round": known.round, "labels": known.labels_mode},
    )


BATCH_COLUMNS = ("rank", "id", "path", "role", "cluster_core", "predicted_class", "boundary_score", "margin", "labeled")

"""`bilaf labels`: annotators' labels into the label store (<project>/labels/), batches out to Label Studio.

`import FILE --round N` checks a plain CSV (id,label) or a Label Studio CSV/JSON/JSON-MIN export
against the pool and round N's batch, adds its labels and, in a DVC project, records the new version.
`tasks --round N --out FILE` writes round N's Label Studio tasks for a given document root, and
`config --out FILE` the labeling config they are shown with.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bilaf.errors import BilafError, InvalidInputError
from bilaf.lock import project_lock
from dagster_project import dvc


def register(subparsers: argparse._SubParsersAction) -> None:
    labels = subparsers.add_parser(
        "labels", help="import annotators' labels; write Label Studio tasks and config", description=__doc__
    )
    actions = labels.add_subparsers(dest="labels_command", required=True)

    importing = actions.add_parser(
        "import",
        help="add an annotator file's labels for round N to the label store",
        description="Every row is checked first (ids in the pool and in round N's batch, known classes, no "
        "relabels); on any error nothing is written. Re-importing a file is a no-op.",
    )
    importing.add_argument(
        "file", type=Path, help="plain CSV (id,label) or a Label Studio export (CSV, JSON, JSON-MIN)"
    )
    _add_round(importing)
    _add_project(importing)
    importing.set_defaults(handler=_import)

    tasks = actions.add_parser("tasks", help="write round N's Label Studio import tasks for a document root")
    _add_round(tasks)
    tasks.add_argument(
        "--document-root",
        type=Path,
        default=None,
        help="Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT (default: the project folder)",
    )
    tasks.add_argument("--out", type=Path, required=True, help="the tasks file to write (.json)")
    _add_project(tasks)
    tasks.set_defaults(handler=_tasks)

    config = actions.add_parser("config", help="write the Label Studio labeling config for the pool's classes")
    config.add_argument("--out", type=Path, required=True, help="the labeling config to write (.xml)")
    _add_project(config)
    config.set_defaults(handler=_config)


def _add_round(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--round",
        type=int,
        required=True,
        dest="round_number",
        help="the annotation round (its batch: rounds/round-NNN/batch.csv or the issued batch)",
    )


def _add_project(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--project", type=Path, default=Path.cwd(), help="project folder (default: cwd)")


def _import(args: argparse.Namespace) -> int:
    from bilaf import rounds
    from bilaf.annotation import import_labels, read_annotator_file
    from bilaf.features import read_manifest
    from bilaf.stages import SOURCE_PATHS
    from bilaf.stages.paths import ProjectPaths
    from bilaf.stages.sources import pool_classes

    paths = ProjectPaths(args.project)
    annotator_file = read_annotator_file(args.file)
    with project_lock(paths.root.resolve(), f"bilaf labels import {args.file} --round {args.round_number}"):
        manifest = read_manifest(paths.data)
        batch_ids = rounds.round_batch_ids(paths.root, args.round_number)
        try:
            report = import_labels(
                paths.labels,
                annotator_file.rows,
                args.round_number,
                pool_ids=set(manifest["id"]),
                batch_ids=batch_ids,
                classes=pool_classes(manifest),
            )
        except BilafError as error:
            raise InvalidInputError(f"{args.file}: nothing imported: {error}") from None
        print(
            f"round {report.round_number} from {args.file} ({annotator_file.format}): {report.added} label(s) "
            f"added, {report.already_known} already known, {len(annotator_file.not_annotated)} not annotated "
            f"yet; {report.batch_unlabeled} of the round's {len(batch_ids)} items still unlabeled; "
            f"{report.labels_total} labels in {paths.labels} (version {report.version})"
        )
        if paths.labels.is_dir() and dvc.is_dvc_project(paths.root):
            recorded = dvc.track(paths.root, SOURCE_PATHS["labels"])
            print(f"recorded with DVC: {SOURCE_PATHS['labels']}.dvc md5 {recorded}")
    return 0


def _tasks(args: argparse.Namespace) -> int:
    from bilaf import artifacts
    from bilaf.annotation import label_studio_tasks
    from bilaf.features import read_manifest
    from bilaf.stages.paths import ProjectPaths, resolve_image

    paths = ProjectPaths(args.project)
    manifest = read_manifest(paths.data)
    path_of = dict(zip(manifest["id"], manifest["path"]))
    batch = _batch_rows(paths.root, args.round_number)
    image_paths = {row["id"]: resolve_image(paths, path_of[row["id"]]) for row in batch if row["id"] in path_of}
    document_root = args.document_root or paths.root
    artifacts.write_json(args.out, label_studio_tasks(batch, image_paths, document_root))
    print(
        f"{len(batch)} Label Studio tasks for round {args.round_number} -> {args.out}; start Label Studio with "
        f"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={Path(document_root).absolute()} and add a Local Files storage "
        "on a folder under it that holds the images"
    )
    return 0


def _config(args: argparse.Namespace) -> int:
    from bilaf.annotation import labeling_config
    from bilaf.features import read_manifest
    from bilaf.stages.paths import ProjectPaths
    from bilaf.stages.sources import pool_classes

    classes = pool_classes(read_manifest(ProjectPaths(args.project).data))
    args.out.write_text(labeling_config(classes))
    print(f"labeling config for {len(classes)} classes -> {args.out}")
    return 0


def _batch_rows(root: Path, round_number: int) -> list[dict[str, Any]]:
    """Round `round_number`'s batch rows (rank, id, path, role, ...)."""
    import pandas as pd

    from bilaf import rounds

    return pd.read_csv(rounds.round_batch_file(root, round_number), dtype={"id": str}).to_dict("records")

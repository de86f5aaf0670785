"""The two sources the stages read: the pool (`data/`, synced from the configured source) and the
labels (`labels/`, imported from annotators; read in `bilaf.stages.labels`), and the check of a
budget against the pool before any work."""

from __future__ import annotations

from pathlib import Path

from bilaf import artifacts, rounds
from bilaf.config import Params
from bilaf.errors import BilafError, InvalidInputError
from bilaf.stages.paths import ProjectPaths


def sync_configured_pool(paths: ProjectPaths, params: Params):
    """Bring data/ up to the source configured in params.yaml (only adds; see `sync_pool`)."""
    from bilaf.features import sync_pool

    section = params.data
    return sync_pool(
        paths.data,
        section.source,
        root=Path(section.root) if section.root else None,
        train_size=section.train_size,
        test_size=section.test_size,
        seed=section.seed,
        on_unreadable=section.on_unreadable,
    )


def check_budget(paths: ProjectPaths, params: Params) -> None:
    """`boundary.budget` against what the round can pick from, before any work: the pool's train
    items (a folder source of unknown size is counted, not read) minus the labeled and pending ones."""
    from bilaf.features import open_source, read_manifest

    train = 0
    if (paths.data / "manifest.csv").is_file():
        manifest = read_manifest(paths.data)
        train = int((manifest["split"] == "train").sum())
    section = params.data
    if section.source == "image-folder" and section.train_size is None:
        try:
            records = open_source(section.source, Path(section.root)).records
        except BilafError as error:
            raise InvalidInputError(f"params: data.root: {error}") from None
        splits = [record.split for record in records]
        in_source = splits.count("train") if "train" in splits else len(splits) - (section.test_size or 0)
        train = max(train, in_source)
    else:
        train = max(train, section.train_size or 0)
    taken = 0
    state = paths.output("round") / rounds.OPEN_NAME
    if state.is_file():
        known = artifacts.read_json(state)
        taken = len(known["labeled"]) + len(known["pending"])
    if train and params.boundary.budget > train - taken:
        raise InvalidInputError(
            f"params: boundary.budget ({params.boundary.budget}) must not exceed the {train - taken} "
            f"train items left to pick from ({train} in the pool, {taken} labeled or pending)"
        )


def pool_classes(manifest) -> list[str]:
    """The pool's class names, in class-index order."""
    labeled = manifest[manifest["label"].notna()]
    return [str(name) for _, name in sorted(set(zip(labeled["label"], labeled["class_name"])))]

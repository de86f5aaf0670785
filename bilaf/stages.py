"""The pipeline's stages as plain functions: read inputs from the project folder, compute, write
outputs atomically. Dagster assets and DVC stages (`bilaf stage NAME`) both call these, so both
produce the same artifacts byte for byte given the same inputs.

Two sources feed the stages: the pool (`data/`, grown by `bilaf ingest` and by syncing the
configured source) and the labels (`labels/`, written by `bilaf labels import`). Every run belongs
to the open annotation round (`bilaf.rounds`): the `round` stage freezes the previous
round when the sources changed, and the selection stages spend `boundary.budget` on items that are
neither labeled nor pending.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bilaf import artifacts, rounds
from bilaf.compute import EMBEDDING_CACHE_ENV, Compute, open_compute
from bilaf.config import PARAMS_FILE, Params, load_params
from bilaf.errors import BilafError, InvalidInputError

if TYPE_CHECKING:
    from bilaf.selection.shards import FeatureRows

PACKAGE_DIR = Path(__file__).resolve().parent
GROUND_TRUTH = "ground-truth"


@dataclasses.dataclass(frozen=True)
class ProjectPaths:
    """Where every stage reads and writes, relative to one project folder."""

    root: Path

    @property
    def params(self) -> Path:
        return self.root / PARAMS_FILE

    @property
    def data(self) -> Path:
        return self.root / SOURCE_PATHS["pool"]

    @property
    def labels(self) -> Path:
        return self.root / SOURCE_PATHS["labels"]

    @property
    def embedding_cache(self) -> Path:
        return self.root / ".cache" / "embeddings"

    def output(self, stage: str) -> Path:
        return self.root / STAGES[stage].output


@dataclasses.dataclass
class StageOutcome:
    """What a stage reports: numbers (MLflow metrics, Dagster metadata), text, and the pictures shown
    in Dagster's metadata (MLflow gets the whole output)."""

    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    plots: list[Path] = dataclasses.field(default_factory=list)


Runner = Callable[[ProjectPaths, Params], StageOutcome]


@dataclasses.dataclass(frozen=True)
class StageSpec:
    """One stage: what it reads (params sections, upstream stages, sources), what it writes, the
    code it runs (files under bilaf/ whose content is its code version) and how."""

    name: str
    params: tuple[str, ...]
    upstream: tuple[str, ...]
    sources: tuple[str, ...]
    output: str
    code: tuple[str, ...]
    group: str
    description: str
    run: Runner
    persist: bool = False  # the output accumulates across runs (DVC `persist: true`)
    registers_model: bool = False  # the output is a model checkpoint, registered in MLflow when trained

    @property
    def code_paths(self) -> tuple[str, ...]:
        """The code the stage runs, relative to bilaf/: the shared glue and its own."""
        return (*STAGE_CODE, *self.code)

    def code_version(self) -> str:
        """sha256 (16 hex) of the stage's code files: a code change makes the stage stale."""
        digest = hashlib.sha256()
        for file in code_files(self.code_paths):
            digest.update(file.relative_to(PACKAGE_DIR).as_posix().encode() + b"\0" + file.read_bytes())
        return digest.hexdigest()[:16]


def code_files(paths: tuple[str, ...]) -> list[Path]:
    """The Python files of ``paths`` (files or packages under bilaf/), sorted."""
    found: set[Path] = set()
    for relative in paths:
        path = PACKAGE_DIR / relative
        found.update([path] if path.is_file() else path.rglob("*.py"))
    return sorted(found)


SOURCE_PATHS = {"pool": "data", "labels": "labels"}
STAGE_CODE = ("stages.py", "artifacts.py", "rounds.py", "progress.py")  # the glue every stage runs through


def run_stage(name: str, root: Path, params: Params | None = None) -> StageOutcome:
    """Run one stage in project folder `root` (parameters from its params.yaml unless given)."""
    if name not in STAGES:
        raise InvalidInputError(f"unknown stage {name!r} (known: {list(STAGES)})")
    paths = ProjectPaths(Path(root).resolve())
    params = params or load_params(paths.params)
    started = time.perf_counter()
    outcome = STAGES[name].run(paths, params)
    outcome.metrics["seconds"] = round(time.perf_counter() - started, 3)
    return outcome


def lineage_params(name: str) -> tuple[str, ...]:
    """The params sections that determine a stage's output: its own and every ancestor's.

    Stages depend on all of them directly because Dagster does not propagate staleness
    transitively: with direct edges, a changed section makes exactly its stage and everything
    after it stale, in the UI as in `dvc status`.
    """
    sections = set(STAGES[name].params)
    for upstream in STAGES[name].upstream:
        sections.update(lineage_params(upstream))
    return tuple(section for section in Params.section_names() if section in sections)


# --- the sources ------------------------------------------------------------------------------


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


# --- stages -----------------------------------------------------------------------------------


def _run_round(paths: ProjectPaths, params: Params) -> StageOutcome:
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


@contextlib.contextmanager
def stage_compute(params: Params, root: Path | None = None) -> Iterator[Compute]:
    """The Compute of `compute.scheduler` (or $BILAF_DASK_SCHEDULER) for one stage of the project
    in ``root`` (where a relative scheduler file is found)."""
    compute = open_compute(params.compute.scheduler, root)
    try:
        yield compute
    finally:
        compute.close()


def check_compute(paths: ProjectPaths, params: Params) -> None:
    """Reach the configured Dask scheduler before any work (one line naming it if it is down)."""
    with stage_compute(params, paths.root):
        pass


def embedding_cache(paths: ProjectPaths, params: Params) -> str:
    """Where embedding shards are cached: $BILAF_EMBEDDING_CACHE, `compute.embedding_cache`, or the
    project's `.cache/embeddings` (a folder or an fsspec URL every worker reaches)."""
    configured = os.environ.get(EMBEDDING_CACHE_ENV) or params.compute.embedding_cache
    if not configured:
        return str(paths.embedding_cache)
    return configured if "://" in configured else str(paths.root / configured)


def _compute_metadata(compute: Compute) -> dict[str, Any]:
    """Where the work ran, for the run log and the asset metadata (never lineage)."""
    return {f"compute_{key}": value for key, value in compute.describe().items()}


def _run_embeddings(paths: ProjectPaths, params: Params) -> StageOutcome:
    from bilaf.features import embed_pool

    section = params.features
    with stage_compute(params, paths.root) as compute:
        info = embed_pool(
            paths.data,
            paths.output("embeddings"),
            backbone=section.backbone,
            weights=section.weights,
            image_size=section.image_size,
            batch_size=section.batch_size,
            cache_dir=embedding_cache(paths, params),
            compute=compute,
        )
        where = _compute_metadata(compute)
    unreadable = pool_unreadable(paths)
    processes = sorted({f"{shard.host}:{shard.pid}" for shard in info.shards})
    return StageOutcome(
        metrics={
            **_numeric({key: value for key, value in dataclasses.asdict(info).items() if key != "shards"}),
            "pool_unreadable_files": len(unreadable),
        },
        metadata={
            "backbone": section.backbone,
            "weights": section.weights,
            **where,
            **({"shards_computed": len(info.shards), "computed_by": ", ".join(processes)} if info.shards else {}),
        },
    )


def pool_unreadable(paths: ProjectPaths) -> list[dict[str, str]]:
    """The files the pool's last sync or ingest could not read (origin and reason), from its report."""
    report = paths.data / "pool_report.json"
    return artifacts.read_json(report)["unreadable"] if report.is_file() else []


def _run_core_centers(paths: ProjectPaths, params: Params) -> StageOutcome:
    from bilaf.selection import select_cores

    pool, known = TrainPool.load(paths), RoundKnowledge.load(paths)
    strategy = round_strategy(params, known, pool)
    n_cores = {ONE_SHOT: params.core.n_cores, "bilaf": params.later_rounds.n_cores}.get(strategy, 0)
    payload: dict[str, Any] = {"round": known.round, "strategy": strategy}
    where: dict[str, Any] = {}
    if n_cores:
        labels, pending = known.rows(pool)
        with stage_compute(params, paths.root) as compute:
            cores = select_cores(
                pool.source,
                n_cores,
                method=params.core.method,
                seed=params.core.seed,
                labels=labels,
                pending=pending,
                compute=compute,
            )
            where = _compute_metadata(compute)
        payload.update(cores=cores.to_dict(), core_ids=pool.ids_at(cores.indices))
    else:
        payload.update(cores=None, core_ids=[], skipped=_SKIPPED[strategy])
    with artifacts.atomic_output(paths.output("core_centers")) as out:
        artifacts.write_json(out, payload)
    return StageOutcome(
        metrics={"n_cores": len(payload["core_ids"]), "pool_size": len(pool.ids)},
        metadata={"round": known.round, "strategy": strategy, **where},
    )


def _run_denoised_pool(paths: ProjectPaths, params: Params) -> StageOutcome:
    from bilaf.selection import class_regions, denoise

    pool, known = TrainPool.load(paths), RoundKnowledge.load(paths)
    strategy = round_strategy(params, known, pool)
    section = params.denoise
    idc = {
        "n_neighbors": section.n_neighbors,
        "ring_fraction": section.ring_fraction,
        "removal_ratio": section.removal_ratio,
    }
    cores = _core_rows(paths, pool)
    payload: dict[str, Any] = {"round": known.round, "strategy": strategy}
    where: dict[str, Any] = {}
    if strategy == ONE_SHOT:
        free = known.free_rows(pool)
        with stage_compute(params, paths.root) as compute:
            denoised = denoise(
                pool.source.subset(free), _positions(free, cores), variant=section.variant, compute=compute, **idc
            )
            where = _compute_metadata(compute)
        payload.update(denoised=denoised.to_dict(), ids=pool.ids_at(free))
        kept = int(np.count_nonzero(denoised.kept))
    elif strategy == "bilaf":
        labels, pending = known.rows(pool)
        regions = class_regions(pool.features, labels, pending=pending, cores=cores, **idc)
        payload.update(regions=regions.to_dict(), ids=pool.ids, classes=pool.class_names)
        kept = int(np.count_nonzero(regions.kept))
    else:
        payload.update(skipped=_SKIPPED[strategy])
        kept = len(pool.ids)
    with artifacts.atomic_output(paths.output("denoised_pool")) as out:
        artifacts.write_json(out, payload)
    return StageOutcome(
        metrics={"pool_size": len(pool.ids), "kept": kept, "removed": len(pool.ids) - kept},
        metadata={"round": known.round, "strategy": strategy, **where},
    )


def _run_boundary_set(paths: ProjectPaths, params: Params) -> StageOutcome:
    from bilaf.plots import plot_selection_projection
    from bilaf.selection import (
        ClassRegions,
        CoreSelection,
        DenoisedPool,
        select,
        select_boundary,
        select_class_boundary,
    )

    pool, known = TrainPool.load(paths), RoundKnowledge.load(paths)
    strategy = round_strategy(params, known, pool)
    denoised = artifacts.read_json(paths.output("denoised_pool"))
    budget, penalty = params.boundary.budget, params.boundary.penalty
    kept = None
    where: dict[str, Any] = {}
    if strategy == ONE_SHOT:
        free = known.free_rows(pool)
        core_rows = _core_rows(paths, pool)
        cores = dataclasses.replace(
            CoreSelection.from_dict(artifacts.read_json(paths.output("core_centers"))["cores"]),
            indices=_positions(free, core_rows),
        )
        stage_two = DenoisedPool.from_dict(denoised["denoised"])
        with stage_compute(params, paths.root) as compute:
            local = select_boundary(
                pool.source.subset(free), cores, stage_two, budget, penalty=penalty, compute=compute
            )
            where = _compute_metadata(compute)
        result = local.on_rows(free)
        kept = np.zeros(len(pool.ids), dtype=bool)
        kept[free[stage_two.kept]] = True
    elif strategy == "bilaf":
        regions = ClassRegions.from_dict(denoised["regions"])
        result = select_class_boundary(pool.features, regions, budget, penalty=penalty)
        kept = regions.kept
    else:
        labels, pending = known.rows(pool)
        with stage_compute(params, paths.root) as compute:
            result = select(
                pool.source, budget, strategy, labels=labels, pending=pending, seed=params.core.seed, compute=compute
            )
            where = _compute_metadata(compute)
    records = selection_records(result, pool, known.round)
    with artifacts.atomic_output(paths.output("boundary_set")) as out:
        out.mkdir()
        artifacts.write_csv(out / "selection.csv", records, SELECTION_COLUMNS)
        artifacts.write_json(
            out / "selection.json",
            {
                "round": known.round,
                "strategy": strategy,
                "selection": result.to_dict(),
                "ids": pool.ids_at(result.indices),
            },
        )
        artifacts.write_json(out / rounds.ROUND_MARKER, {"round": known.round})
        plot_selection_projection(pool.source, result.core_indices, kept, result, out / "projection.png")
    final = paths.output("boundary_set")
    roles = [record["role"] for record in records]
    return StageOutcome(
        metrics={
            "selected": len(records),
            "cores": roles.count("core"),
            "boundary": roles.count("boundary"),
            "unique": len({record["id"] for record in records}),
            "round": known.round,
        },
        metadata={"round": known.round, "strategy": strategy, **where},
        plots=[final / "projection.png"],
    )


def _run_annotation_batch(paths: ProjectPaths, params: Params) -> StageOutcome:
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


def _run_finetuned_model(paths: ProjectPaths, params: Params) -> StageOutcome:
    import torch

    from bilaf.features import create_classifier, input_normalisation
    from bilaf.training import FinetuneConfig, ModelMetadata, finetune, save_finetuned

    labeled = LabeledSelection.load(paths)
    round_number = rounds.output_round(paths.output("annotation_batch"))
    if labeled.waiting_for:
        return _waiting(paths.output("finetuned_model"), round_number, labeled.waiting_for)
    section = params.finetune
    config = FinetuneConfig(
        epochs=section.epochs,
        image_size=section.image_size,
        batch_size=section.batch_size,
        learning_rate=section.lr,
        warmup_epochs=min(2.0, section.epochs - 1),
        seed=section.seed,
    )
    torch.manual_seed(section.seed)  # the new head's initialisation: same seed, same model
    model = create_classifier(
        params.features.backbone, num_classes=len(labeled.classes), weights=params.features.weights
    )
    mean, std = input_normalisation(params.features.backbone, params.features.weights)
    result = finetune(model, labeled.train_paths, labeled.train_labels, mean=mean, std=std, config=config)
    metadata = ModelMetadata(
        backbone=params.features.backbone,
        classes=labeled.classes,
        image_size=section.image_size,
        mean=tuple(mean),
        std=tuple(std),
        extra={"config": config.to_dict(), "train_items": len(labeled.train_paths)},
    )
    with artifacts.atomic_output(paths.output("finetuned_model")) as out:
        save_finetuned(result.model, metadata, out)
        # Loss and learning rate per epoch; throughput is a timing, reported as a metric only so
        # that the artifact stays byte-for-byte reproducible.
        artifacts.write_json(
            out / "history.json",
            [{"epoch": epoch.epoch, "loss": epoch.loss, "lr": epoch.lr} for epoch in result.history],
        )
        artifacts.write_json(out / rounds.ROUND_MARKER, {"round": round_number, "trained": True})
    last = result.history[-1]
    return StageOutcome(
        metrics={
            "train_items": len(labeled.train_paths),
            "classes": len(labeled.classes),
            "final_loss": last.loss,
            "images_per_second": last.images_per_second,
            "round": round_number,
        },
        metadata={"round": round_number, "trained": True},
    )


def _run_evaluation(paths: ProjectPaths, params: Params) -> StageOutcome:
    import matplotlib.pyplot as plt

    from bilaf.features import load_embeddings
    from bilaf.training import evaluate_finetuned, knn_probe, linear_probe, load_finetuned, plot_confusion_matrix

    labeled = LabeledSelection.load(paths)
    round_number = rounds.output_round(paths.output("annotation_batch"))
    if labeled.waiting_for:
        return _waiting(paths.output("evaluation"), round_number, labeled.waiting_for)
    model, metadata = load_finetuned(paths.output("finetuned_model"))
    num_classes = len(labeled.classes)
    finetuned = evaluate_finetuned(
        model, labeled.test_paths, labeled.test_labels, metadata.eval_transform(), num_classes=num_classes
    )
    embeddings = load_embeddings(paths.output("embeddings"))
    row = {item: position for position, item in enumerate(embeddings.ids)}
    features = np.asarray(embeddings.features)
    train_x = features[[row[item] for item in labeled.train_ids]]
    test_x = features[[row[item] for item in labeled.test_ids]]
    probes = {
        "linear_probe": linear_probe(
            train_x, labeled.train_labels, test_x, labeled.test_labels, num_classes=num_classes
        ),
        "knn": knn_probe(
            train_x,
            labeled.train_labels,
            test_x,
            labeled.test_labels,
            num_classes=num_classes,
            k=params.evaluation.knn_k,
        ),
    }
    results = {"finetuned": finetuned, **probes}
    with artifacts.atomic_output(paths.output("evaluation")) as out:
        out.mkdir()
        artifacts.write_json(
            out / "metrics.json",
            {
                "round": round_number,
                "classes": labeled.classes,
                "test_items": len(labeled.test_ids),
                "train_items": len(labeled.train_ids),
                **{
                    name: {
                        "top1": float(metrics.accuracy),
                        "per_class_accuracy": [
                            None if np.isnan(value) else float(value) for value in metrics.per_class_accuracy
                        ],
                        "confusion": np.asarray(metrics.confusion).tolist(),
                    }
                    for name, metrics in results.items()
                },
            },
        )
        artifacts.write_json(out / rounds.ROUND_MARKER, {"round": round_number, "trained": True})
        figure = plot_confusion_matrix(
            finetuned.confusion,
            labeled.classes,
            title=f"Finetuned model on the test split (top-1 {finetuned.accuracy:.3f})",
        )
        figure.savefig(out / "confusion.png", format="png", metadata={"Software": None})
        plt.close(figure)
    final = paths.output("evaluation")
    return StageOutcome(
        metrics={**{f"{name}_top1": metrics.accuracy for name, metrics in results.items()}, "round": round_number},
        metadata={"round": round_number, "trained": True},
        plots=[final / "confusion.png"],
    )


def _waiting(output: Path, round_number: int | None, reason: str) -> StageOutcome:
    """A stage that cannot run yet (too few labels) writes why, so every run finishes and the
    stage becomes stale as soon as labels arrive."""
    with artifacts.atomic_output(output) as out:
        out.mkdir()
        artifacts.write_json(
            out / rounds.ROUND_MARKER, {"round": round_number, "trained": False, "waiting_for": reason}
        )
    return StageOutcome(metrics={"round": round_number or 0}, metadata={"trained": False, "waiting_for": reason})


# --- what a round knows, and what it does with it ---------------------------------------------

ONE_SHOT = "one-shot"
_SKIPPED = {
    "bilaf": "no coverage cores this round (later_rounds.n_cores = 0)",
    **{
        method: f"later_rounds.method {method} picks the whole round in boundary_set"
        for method in ("activeft", "kmeans", "kcenter", "random", "margin")
    },
}


def round_strategy(params: Params, known: RoundKnowledge, pool: TrainPool) -> str:
    """What this round runs: "one-shot" (round 1, or no labels of 2+ classes yet: core, denoise and
    boundary sections, around the pending items) or `later_rounds.method` once there are."""
    labeled_classes = {label for item, label in known.labeled.items() if item in pool.row_of}
    return params.later_rounds.method if len(labeled_classes) >= 2 else ONE_SHOT


@dataclasses.dataclass(frozen=True)
class RoundKnowledge:
    """The open round as the `round` stage recorded it: its number, its inputs, the labeled items
    (id -> class name) and the pending ones (sent, not labeled)."""

    round: int
    pool_version: str
    labels_version: str
    labels_mode: str
    labeled: dict[str, str]
    pending: list[str]

    @classmethod
    def load(cls, paths: ProjectPaths) -> RoundKnowledge:
        state = artifacts.read_json(paths.output("round") / rounds.OPEN_NAME)
        return cls(
            round=int(state["round"]),
            pool_version=state["pool_version"],
            labels_version=state["labels_version"],
            labels_mode=state["labels"],
            labeled=dict(state["labeled"]),
            pending=list(state["pending"]),
        )

    def rows(self, pool: TrainPool) -> tuple[np.ndarray, np.ndarray]:
        """(class index per train row, -1 = unlabeled; pending rows) for the selection engine."""
        index_of = {name: index for index, name in enumerate(pool.class_names)}
        labels = np.full(len(pool.ids), -1, dtype=np.int64)
        for item, name in self.labeled.items():
            if item in pool.row_of:
                labels[pool.row_of[item]] = index_of[name]
        pending = np.array(sorted(pool.row_of[item] for item in self.pending if item in pool.row_of), dtype=np.int64)
        return labels, pending

    def free_rows(self, pool: TrainPool) -> np.ndarray:
        """Train rows neither labeled nor pending, ascending: what a one-shot round picks from."""
        labels, pending = self.rows(pool)
        taken = labels >= 0
        taken[pending] = True
        return np.flatnonzero(~taken)


@dataclasses.dataclass(frozen=True)
class TrainPool:
    """The train split's embeddings in id order: what selection runs on (rows index these arrays).

    Sorting by id makes the picks depend on the pool's content, not on the order files were found.
    """

    ids: list[str]
    paths: list[str]
    features_file: Path
    rows: np.ndarray  # the train rows of features.npy, in id order
    class_names: list[str]

    @functools.cached_property
    def row_of(self) -> dict[str, int]:
        return {item: row for row, item in enumerate(self.ids)}

    @property
    def source(self) -> FeatureRows:
        """The train features as the selection reads them: from features.npy, shard by shard, where
        the Compute runs its tasks."""
        from bilaf.selection.shards import FeatureRows

        return FeatureRows.of_file(self.features_file, self.rows)

    @functools.cached_property
    def features(self) -> np.ndarray:
        """The train features in this process (for the steps that run here)."""
        return self.source.materialize()

    @classmethod
    def load(cls, paths: ProjectPaths) -> TrainPool:
        from bilaf.features import load_embeddings, read_manifest

        embeddings = load_embeddings(paths.output("embeddings"))
        manifest = read_manifest(paths.data)
        path_of = dict(zip(manifest["id"], manifest["path"]))
        train = np.flatnonzero(np.asarray(embeddings.splits) == "train")
        if train.size == 0:
            raise InvalidInputError("the pool has no train-split items to select from")
        train = train[np.argsort(np.asarray(embeddings.ids)[train], kind="stable")]
        ids = [str(embeddings.ids[i]) for i in train]
        return cls(
            ids=ids,
            paths=[path_of[item] for item in ids],
            class_names=pool_classes(manifest),
            features_file=paths.output("embeddings") / "features.npy",
            rows=train,
        )

    def ids_at(self, positions: Any) -> list[str]:
        return [self.ids[int(position)] for position in positions]


def pool_classes(manifest) -> list[str]:
    """The pool's class names, in class-index order."""
    labeled = manifest[manifest["label"].notna()]
    return [str(name) for _, name in sorted(set(zip(labeled["label"], labeled["class_name"])))]


def resolve_image(paths: ProjectPaths, manifest_path: str) -> Path:
    """A manifest path is relative to data/ (copies, files inside the project) or absolute."""
    return paths.data / manifest_path


def _core_rows(paths: ProjectPaths, pool: TrainPool) -> np.ndarray:
    core_ids = artifacts.read_json(paths.output("core_centers"))["core_ids"]
    return np.array(sorted(pool.row_of[item] for item in core_ids), dtype=np.int64)


def _positions(rows: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Positions of ``wanted`` rows inside the ascending ``rows``."""
    return np.searchsorted(rows, wanted).astype(np.int64)


SELECTION_COLUMNS = (
    "rank",
    "id",
    "path",
    "role",
    "cluster_core",
    "rival_core",
    "predicted_class",
    "rival_class",
    "boundary_score",
    "penalty_factor",
    "margin",
    "round",
)
BATCH_COLUMNS = ("rank", "id", "path", "role", "cluster_core", "predicted_class", "boundary_score", "margin", "labeled")


def selection_records(result, pool: TrainPool, round_number: int) -> list[dict[str, Any]]:
    """One row per pick, every reference an item id or a class name (never a row position)."""
    cluster_core = {stats.cluster: pool.ids[stats.core_index] for stats in result.clusters}

    def name(index: int | None) -> str | None:
        return None if index is None else pool.class_names[index]

    return [
        {
            "rank": pick.rank,
            "id": pool.ids[pick.index],
            "path": pool.paths[pick.index],
            "role": pick.role,
            "cluster_core": cluster_core.get(pick.cluster),
            "rival_core": None if pick.rival_center is None else pool.ids[pick.rival_center],
            "predicted_class": name(pick.predicted_class),
            "rival_class": name(pick.rival_class),
            "boundary_score": pick.boundary_score,
            "penalty_factor": pick.penalty_factor,
            "margin": pick.margin,
            "round": round_number,
        }
        for pick in result.picks
    ]


@dataclasses.dataclass(frozen=True)
class LabeledSelection:
    """The training labels of this round (every label so far) and the test split, as class indices.

    ``waiting_for`` says why nothing can be trained yet (fewer than two labeled classes), else "".
    """

    classes: list[str]
    train_ids: list[str]
    train_paths: list[str]
    train_labels: np.ndarray
    test_ids: list[str]
    test_paths: list[str]
    test_labels: np.ndarray
    waiting_for: str

    @classmethod
    def load(cls, paths: ProjectPaths) -> LabeledSelection:
        import pandas as pd

        from bilaf.features import read_manifest
        from bilaf.training import validate_labeled_selection

        manifest = read_manifest(paths.data)
        given = pd.read_csv(paths.output("annotation_batch") / "labels.csv", dtype=str, keep_default_na=False)
        classes = pool_classes(manifest)
        test = manifest[manifest["split"] == "test"]
        path_of = dict(zip(manifest["id"], manifest["path"]))
        train_ids = given["id"].tolist()
        present = set(given["label"])
        if len(present) < 2:
            return cls(
                classes=classes,
                train_ids=train_ids,
                train_paths=[],
                train_labels=np.empty(0, np.int64),
                test_ids=[],
                test_paths=[],
                test_labels=np.empty(0, np.int64),
                waiting_for=f"labels of at least 2 classes ({len(given)} labeled items, "
                f"{len(present)} class(es) so far): import annotators' labels with "
                "`bilaf labels import FILE --round N`",
            )
        validated = validate_labeled_selection(
            train_ids, dict(zip(given["id"], given["label"])), classes, test["label"].tolist()
        )
        return cls(
            classes=classes,
            train_ids=train_ids,
            train_paths=[str(resolve_image(paths, path_of[i])) for i in train_ids],
            train_labels=validated.train,
            test_ids=test["id"].tolist(),
            test_paths=[str(resolve_image(paths, p)) for p in test["path"]],
            test_labels=validated.test,
            waiting_for="",
        )


def _numeric(values: dict[str, Any]) -> dict[str, float]:
    return {
        key: float(value)
        for key, value in values.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }


_SPECS = (
    StageSpec(
        "round",
        ("annotation",),
        (),
        ("pool", "labels"),
        "rounds",
        ("annotation",),
        "rounds",
        "The annotation round: earlier rounds frozen when the pool or labels changed; what is labeled "
        "and what is pending.",
        _run_round,
        persist=True,
    ),
    StageSpec(
        "embeddings",
        ("data", "features"),
        (),
        ("pool",),
        "artifacts/embeddings",
        ("features",),
        "selection",
        "Frozen-backbone features of every pool item, keyed by item id (new items only are computed).",
        _run_embeddings,
    ),
    StageSpec(
        "core_centers",
        ("core", "later_rounds"),
        ("embeddings", "round"),
        (),
        "artifacts/core_centers.json",
        ("selection",),
        "selection",
        "Coverage picks of the round (ActiveFT by default): BiLAF's cores, with every labeled and pending "
        "item as a fixed anchor.",
        _run_core_centers,
    ),
    StageSpec(
        "denoised_pool",
        ("denoise",),
        ("embeddings", "round", "core_centers"),
        (),
        "artifacts/denoised_pool.json",
        ("selection",),
        "selection",
        "Clusters (round 1: around the cores; later rounds: the classes of the labels) with their "
        "peripheral items removed by IDC.",
        _run_denoised_pool,
    ),
    StageSpec(
        "boundary_set",
        ("boundary",),
        ("embeddings", "round", "core_centers", "denoised_pool"),
        (),
        "artifacts/boundary_set",
        ("selection", "plots.py"),
        "selection",
        "The round's selection: cores plus boundary picks, with per-pick provenance.",
        _run_boundary_set,
    ),
    StageSpec(
        "annotation_batch",
        (),
        ("boundary_set", "round"),
        ("pool",),
        "artifacts/annotation_batch",
        ("annotation",),
        "selection",
        "The round's batch for annotators (CSV, Label Studio tasks) and the labels training uses.",
        _run_annotation_batch,
    ),
    StageSpec(
        "finetuned_model",
        ("features", "finetune"),
        ("annotation_batch",),
        ("pool",),
        "artifacts/finetuned_model",
        ("training", "features"),
        "training",
        "The backbone finetuned on every label so far.",
        _run_finetuned_model,
        registers_model=True,
    ),
    StageSpec(
        "evaluation",
        ("evaluation",),
        ("finetuned_model", "embeddings", "annotation_batch"),
        ("pool",),
        "artifacts/evaluation",
        ("training", "features"),
        "training",
        "Test-split accuracy of the finetuned model, a linear probe and kNN.",
        _run_evaluation,
    ),
)
STAGES: dict[str, StageSpec] = {spec.name: spec for spec in _SPECS}

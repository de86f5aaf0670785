"""The pipeline's stages as plain functions: read inputs from the project folder, compute, write
outputs atomically. Dagster assets and DVC stages (`bilaf stage NAME`) both call these, so both
produce the same artifacts byte for byte given the same parameters.
"""
from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dagster_project import artifacts
from dagster_project.config import PARAMS_FILE, DataParams, Params, load_params


@dataclasses.dataclass(frozen=True)
class ProjectPaths:
    """Where every stage reads and writes, relative to one project folder."""

    root: Path

    @property
    def params(self) -> Path:
        return self.root / PARAMS_FILE

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def embedding_cache(self) -> Path:
        return self.root / ".cache" / "embeddings"

    def output(self, stage: str) -> Path:
        return self.data if stage == "pool" else self.artifacts / STAGES[stage].output


@dataclasses.dataclass(frozen=True)
class StageSpec:
    """One stage: the params sections it reads, the stages it needs, the output it writes."""

    name: str
    params: tuple[str, ...]
    upstream: tuple[str, ...]
    output: str
    description: str


@dataclasses.dataclass
class StageOutcome:
    """What a stage reports: numbers (MLflow metrics, Dagster metadata), text, files to log."""

    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    files: list[Path] = dataclasses.field(default_factory=list)
    plots: list[Path] = dataclasses.field(default_factory=list)


_SPECS = (
    StageSpec("pool", ("data",), (), "data", "The image pool: images plus manifest (id, path, label, split)."),
    StageSpec("embeddings", ("features",), ("pool",), "embeddings",
              "Frozen-backbone features of every pool item, keyed by item id."),
    StageSpec("core_centers", ("core",), ("embeddings",), "core_centers.json",
              "Stage 1: core samples (pseudo-class centres) chosen on the train split."),
    StageSpec("denoised_pool", ("denoise",), ("embeddings", "core_centers"), "denoised_pool.json",
              "Stage 2 steps 1-2: items assigned to their nearest core; peripheral items removed by IDC."),
    StageSpec("boundary_set", ("boundary",), ("embeddings", "core_centers", "denoised_pool"), "boundary_set",
              "The final selection: cores plus boundary picks, with per-pick provenance."),
    StageSpec("annotation_batch", ("annotation",), ("boundary_set", "pool"), "annotation_batch",
              "The selection exported for annotators (CSV, Label Studio import) and the labels returned."),
    StageSpec("finetuned_model", ("features", "finetune"), ("annotation_batch", "pool"), "finetuned_model",
              "The backbone finetuned on the labeled selection."),
    StageSpec("evaluation", ("evaluation",), ("finetuned_model", "embeddings", "annotation_batch"),
              "evaluation", "Test-split accuracy of the finetuned model, a linear probe and kNN."),
)
STAGES: dict[str, StageSpec] = {spec.name: spec for spec in _SPECS}


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


def run_stage(name: str, root: Path, params: Params | None = None) -> StageOutcome:
    """Run one stage in project folder `root` (parameters from its params.yaml unless given)."""
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r} (known: {list(STAGES)})")
    paths = ProjectPaths(Path(root).resolve())
    params = params or load_params(paths.params)
    started = time.perf_counter()
    outcome = _RUNNERS[name](paths, params)
    outcome.metrics["seconds"] = round(time.perf_counter() - started, 3)
    return outcome


# --- stages -----------------------------------------------------------------------------------

SOURCE_FINGERPRINT = "source_fingerprint"


def source_location(section: DataParams) -> Path | None:
    """Where the pool's source lives (its files are what the refresh sensor watches)."""
    from dagster_project.features import default_source_root

    return Path(section.root) if section.root else default_source_root(section.source)


def source_fingerprint(location: Path | None) -> str:
    """Cheap change detector for a data source: names, sizes and mtimes of its files."""
    if location is None or not location.exists():
        return "absent"
    digest = hashlib.sha256()
    files = [location] if location.is_file() else sorted(path for path in location.rglob("*") if path.is_file())
    for path in files:
        stat = path.stat()
        digest.update(f"{path.relative_to(location.parent)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _run_pool(paths: ProjectPaths, params: Params) -> StageOutcome:
    from dagster_project.features import prepare_pool

    section = params.data
    report = prepare_pool(
        section.source, paths.data, root=Path(section.root) if section.root else None,
        train_size=section.train_size, test_size=section.test_size, seed=section.seed,
        on_unreadable=section.on_unreadable,
    )
    return StageOutcome(metrics=_numeric(dataclasses.asdict(report)),
                        metadata={SOURCE_FINGERPRINT: source_fingerprint(source_location(section))})


def _run_embeddings(paths: ProjectPaths, params: Params) -> StageOutcome:
    from dagster_project.features import embed_pool

    section = params.features
    info = embed_pool(
        paths.data, paths.output("embeddings"), backbone=section.backbone, weights=section.weights,
        image_size=section.image_size, batch_size=section.batch_size, cache_dir=paths.embedding_cache,
    )
    return StageOutcome(metrics=_numeric(dataclasses.asdict(info)),
                        metadata={"backbone": section.backbone, "weights": section.weights})


def _run_core_centers(paths: ProjectPaths, params: Params) -> StageOutcome:
    from dagster_project.selection import select_cores

    pool = TrainPool.load(paths)
    cores = select_cores(pool.features, params.core.n_cores, method=params.core.method, seed=params.core.seed)
    payload = {"cores": cores.to_dict(), "core_ids": pool.ids_at(cores.indices)}
    with artifacts.atomic_output(paths.output("core_centers")) as out:
        artifacts.write_json(out, payload)
    return StageOutcome(metrics={"n_cores": len(cores.indices), "pool_size": len(pool.ids)})


def _run_denoised_pool(paths: ProjectPaths, params: Params) -> StageOutcome:
    from dagster_project.selection import denoise

    pool = TrainPool.load(paths)
    cores = _load_cores(paths)
    section = params.denoise
    denoised = denoise(pool.features, cores, variant=section.variant, n_neighbors=section.n_neighbors,
                       ring_fraction=section.ring_fraction, removal_ratio=section.removal_ratio)
    with artifacts.atomic_output(paths.output("denoised_pool")) as out:
        artifacts.write_json(out, {"denoised": denoised.to_dict(), "ids": pool.ids})
    kept = int(np.count_nonzero(denoised.kept))
    return StageOutcome(metrics={"pool_size": len(pool.ids), "kept": kept, "removed": len(pool.ids) - kept})


def _run_boundary_set(paths: ProjectPaths, params: Params) -> StageOutcome:
    from dagster_project.plots import plot_selection_projection
    from dagster_project.selection import select_boundary

    pool = TrainPool.load(paths)
    cores = _load_cores(paths)
    denoised = _load_denoised(paths)
    result = select_boundary(pool.features, cores, denoised, params.boundary.budget,
                             penalty=params.boundary.penalty)
    records = [dict(record, id=pool.ids[record["index"]], path=pool.paths[record["index"]])
               for record in result.to_records()]
    with artifacts.atomic_output(paths.output("boundary_set")) as out:
        out.mkdir()
        artifacts.write_csv(out / "selection.csv", records, SELECTION_COLUMNS)
        artifacts.write_json(out / "selection.json", {"selection": result.to_dict(), "ids": pool.ids_at(result.indices)})
        plot_selection_projection(pool.features, cores.indices, denoised.kept, result, out / "projection.png")
    final = paths.output("boundary_set")
    roles = [record["role"] for record in records]
    return StageOutcome(
        metrics={"selected": len(records), "cores": roles.count("core"), "boundary": roles.count("boundary"),
                 "unique": len({record["id"] for record in records})},
        files=[final / "selection.csv", final / "selection.json"], plots=[final / "projection.png"],
    )


def _run_annotation_batch(paths: ProjectPaths, params: Params) -> StageOutcome:
    import pandas as pd

    from dagster_project.features import read_manifest

    selection = pd.read_csv(paths.output("boundary_set") / "selection.csv", dtype={"id": str})
    if params.annotation.labels_csv:
        labels = read_labels_csv(paths.root / params.annotation.labels_csv)
        source = f"annotations:{params.annotation.labels_csv}"
    else:
        manifest = read_manifest(paths.data)
        labeled = manifest[manifest["label"].notna()]  # as annotators would: the class name
        labels = labeled[["id", "class_name"]].rename(columns={"class_name": "label"})
        source = "ground-truth"
    labels = labels[labels["id"].isin(selection["id"])].drop_duplicates("id").sort_values("id")
    unique_selection = selection.drop_duplicates("id")
    with artifacts.atomic_output(paths.output("annotation_batch")) as out:
        out.mkdir()
        columns = ["rank", "id", "path", "role", "cluster", "boundary_score"]
        artifacts.write_csv(out / "to_annotate.csv", unique_selection[columns].to_dict("records"), columns)
        artifacts.write_json(out / "label_studio_tasks.json", [
            {"data": {"image": str(Path(row["path"]).as_posix()), "item_id": row["id"], "role": row["role"],
                      "cluster": int(row["cluster"]), "rank": int(row["rank"])}}
            for row in unique_selection.to_dict("records")
        ])
        artifacts.write_csv(out / "labels.csv", [dict(row, source=source) for row in labels.to_dict("records")],
                            ["id", "label", "source"])
    final = paths.output("annotation_batch")
    return StageOutcome(
        metrics={"to_annotate": len(unique_selection), "labeled": len(labels),
                 "unlabeled": len(unique_selection) - len(labels)},
        metadata={"label_source": source},
        files=[final / "to_annotate.csv", final / "label_studio_tasks.json", final / "labels.csv"],
    )


def _run_finetuned_model(paths: ProjectPaths, params: Params) -> StageOutcome:
    import torch

    from dagster_project.features import create_classifier, input_normalisation
    from dagster_project.training import FinetuneConfig, ModelMetadata, finetune, save_finetuned

    labeled = LabeledSelection.load(paths)
    section = params.finetune
    config = FinetuneConfig(epochs=section.epochs, image_size=section.image_size, batch_size=section.batch_size,
                            learning_rate=section.lr, warmup_epochs=min(2.0, section.epochs - 1), seed=section.seed)
    torch.manual_seed(section.seed)  # the new head's initialisation: same seed, same model
    model = create_classifier(params.features.backbone, num_classes=len(labeled.classes),
                              weights=params.features.weights)
    mean, std = input_normalisation(params.features.backbone, params.features.weights)
    result = finetune(model, labeled.train_paths, labeled.train_labels, mean=mean, std=std, config=config)
    metadata = ModelMetadata(backbone=params.features.backbone, classes=labeled.classes,
                             image_size=section.image_size, mean=tuple(mean), std=tuple(std),
                             extra={"config": config.to_dict(), "train_items": len(labeled.train_paths)})
    with artifacts.atomic_output(paths.output("finetuned_model")) as out:
        save_finetuned(result.model, metadata, out)
        # Loss and learning rate per epoch; throughput is a timing, reported as a metric only so
        # that the artifact stays byte-for-byte reproducible.
        artifacts.write_json(out / "history.json", [{"epoch": epoch.epoch, "loss": epoch.loss, "lr": epoch.lr}
                                                    for epoch in result.history])
    final = paths.output("finetuned_model")
    last = result.history[-1]
    return StageOutcome(
        metrics={"train_items": len(labeled.train_paths), "classes": len(labeled.classes),
                 "final_loss": last.loss, "images_per_second": last.images_per_second},
        files=[final / "history.json"],
    )


def _run_evaluation(paths: ProjectPaths, params: Params) -> StageOutcome:
    from dagster_project.features import load_embeddings
    import matplotlib.pyplot as plt

    from dagster_project.training import (evaluate_finetuned, knn_probe, linear_probe, load_finetuned,
                                          plot_confusion_matrix)

    labeled = LabeledSelection.load(paths)
    model, metadata = load_finetuned(paths.output("finetuned_model"))
    num_classes = len(labeled.classes)
    finetuned = evaluate_finetuned(model, labeled.test_paths, labeled.test_labels, metadata.eval_transform(),
                                   num_classes=num_classes)
    embeddings = load_embeddings(paths.output("embeddings"))
    row = {item: position for position, item in enumerate(embeddings.ids)}
    features = np.asarray(embeddings.features)
    train_x = features[[row[item] for item in labeled.train_ids]]
    test_x = features[[row[item] for item in labeled.test_ids]]
    probes = {
        "linear_probe": linear_probe(train_x, labeled.train_labels, test_x, labeled.test_labels,
                                     num_classes=num_classes),
        "knn": knn_probe(train_x, labeled.train_labels, test_x, labeled.test_labels, num_classes=num_classes,
                         k=params.evaluation.knn_k),
    }
    results = {"finetuned": finetuned, **probes}
    with artifacts.atomic_output(paths.output("evaluation")) as out:
        out.mkdir()
        artifacts.write_json(out / "metrics.json", {
            "classes": labeled.classes, "test_items": len(labeled.test_ids), "train_items": len(labeled.train_ids),
            **{name: {"top1": float(metrics.accuracy),
                      "per_class_accuracy": [None if np.isnan(value) else float(value)
                                             for value in metrics.per_class_accuracy],
                      "confusion": np.asarray(metrics.confusion).tolist()} for name, metrics in results.items()},
        })
        figure = plot_confusion_matrix(finetuned.confusion, labeled.classes,
                                       title=f"Finetuned model on the test split (top-1 {finetuned.accuracy:.3f})")
        figure.savefig(out / "confusion.png", format="png", metadata={"Software": None})
        plt.close(figure)
    final = paths.output("evaluation")
    return StageOutcome(metrics={f"{name}_top1": metrics.accuracy for name, metrics in results.items()},
                        files=[final / "metrics.json"], plots=[final / "confusion.png"])


@dataclasses.dataclass(frozen=True)
class LabeledSelection:
    """The annotated selection and the test split, labels validated and encoded as class indices."""

    classes: list[str]
    train_ids: list[str]
    train_paths: list[str]
    train_labels: np.ndarray
    test_ids: list[str]
    test_paths: list[str]
    test_labels: np.ndarray

    @classmethod
    def load(cls, paths: ProjectPaths) -> "LabeledSelection":
        import pandas as pd

        from dagster_project.features import read_manifest
        from dagster_project.training import validate_labeled_selection

        manifest = read_manifest(paths.data)
        batch = paths.output("annotation_batch")
        selected = pd.read_csv(batch / "to_annotate.csv", dtype={"id": str})["id"].tolist()
        given = pd.read_csv(batch / "labels.csv", dtype={"id": str, "label": str}, keep_default_na=False)
        labeled = manifest[manifest["label"].notna()]
        classes = [str(name) for _, name in sorted(set(zip(labeled["label"], labeled["class_name"])))]
        test = manifest[manifest["split"] == "test"]
        validated = validate_labeled_selection(selected, dict(zip(given["id"], given["label"])), classes,
                                               test["label"].tolist())
        path_of = dict(zip(manifest["id"], manifest["path"]))
        return cls(classes=classes, train_ids=selected, train_paths=[str(paths.data / path_of[i]) for i in selected],
                   train_labels=validated.train, test_ids=test["id"].tolist(),
                   test_paths=[str(paths.data / p) for p in test["path"]], test_labels=validated.test)


def read_labels_csv(path: Path):
    """Labels from an annotation tool: a CSV with an `id` (or `item_id`) and a `label` (or `choice`) column."""
    import pandas as pd

    if not path.is_file():
        raise ValueError(f"annotation.labels_csv: file not found: {path}")
    frame = pd.read_csv(path, dtype=str)
    id_column = next((name for name in ("id", "item_id") if name in frame.columns), None)
    label_column = next((name for name in ("label", "choice") if name in frame.columns), None)
    if id_column is None or label_column is None:
        raise ValueError(f"{path}: needs an `id` (or `item_id`) and a `label` (or `choice`) column, "
                         f"found {list(frame.columns)}")
    frame = frame.rename(columns={id_column: "id", label_column: "label"})[["id", "label"]]
    return frame.dropna()


SELECTION_COLUMNS = ("rank", "id", "path", "role", "cluster", "boundary_score", "rival_center",
                     "penalty_factor", "index")


_RUNNERS: dict[str, Callable[[ProjectPaths, Params], StageOutcome]] = {
    "pool": _run_pool,
    "embeddings": _run_embeddings,
    "core_centers": _run_core_centers,
    "denoised_pool": _run_denoised_pool,
    "boundary_set": _run_boundary_set,
    "annotation_batch": _run_annotation_batch,
    "finetuned_model": _run_finetuned_model,
    "evaluation": _run_evaluation,
}


# --- shared readers ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TrainPool:
    """The train split's embeddings: what selection runs on (positions index these arrays)."""

    ids: list[str]
    paths: list[str]
    labels: np.ndarray
    features: np.ndarray

    @classmethod
    def load(cls, paths: ProjectPaths) -> "TrainPool":
        from dagster_project.features import load_embeddings, read_manifest

        embeddings = load_embeddings(paths.output("embeddings"))
        manifest = read_manifest(paths.data).set_index("id")
        train = np.flatnonzero(np.asarray(embeddings.splits) == "train")
        if train.size == 0:
            raise ValueError("the pool has no train-split items to select from")
        ids = [embeddings.ids[i] for i in train]
        return cls(ids=ids, paths=[str(manifest.at[item, "path"]) for item in ids],
                   labels=np.asarray(embeddings.labels)[train],
                   features=np.ascontiguousarray(np.asarray(embeddings.features)[train], dtype=np.float32))

    def ids_at(self, positions: Any) -> list[str]:
        return [self.ids[int(position)] for position in positions]


def _load_cores(paths: ProjectPaths):
    from dagster_project.selection import CoreSelection

    return CoreSelection.from_dict(artifacts.read_json(paths.output("core_centers"))["cores"])


def _load_denoised(paths: ProjectPaths):
    from dagster_project.selection import DenoisedPool

    return DenoisedPool.from_dict(artifacts.read_json(paths.output("denoised_pool"))["denoised"])


def _numeric(values: dict[str, Any]) -> dict[str, float]:
    return {key: float(value) for key, value in values.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}

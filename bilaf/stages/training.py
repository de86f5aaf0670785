"""The training stages: `finetuned_model` (the backbone finetuned on every label so far) and
`evaluation` (its test-split accuracy beside a linear probe and kNN)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from bilaf import artifacts, rounds
from bilaf.config import Params
from bilaf.stages.paths import ProjectPaths, resolve_image
from bilaf.stages.sources import pool_classes
from bilaf.stages.table import StageOutcome


def run_finetuned_model(paths: ProjectPaths, params: Params) -> StageOutcome:
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


def run_evaluation(paths: ProjectPaths, params: Params) -> StageOutcome:
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

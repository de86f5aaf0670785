"""Evaluation: the finetuned model on the test split, and two cheap learners on frozen features.

The frozen-feature learners follow the paper's Table 10 (kNN and linear probe on pretrained
features of the selected items): both are deterministic, take numpy arrays and return the same
``ClassificationMetrics`` as the finetuned model, so the three are directly comparable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import ConfusionMatrixDisplay, confusion_matrix
from threadpoolctl import threadpool_limits
from torch import nn
from torch.utils.data import DataLoader

from bilaf import defaults
from bilaf.errors import InvalidInputError
from bilaf.features.backbones import resolve_device
from bilaf.features.transforms import Transform
from bilaf.progress import Progress
from bilaf.training.data import ImageListDataset

__all__ = [
    "ClassificationMetrics",
    "classification_metrics",
    "evaluate_finetuned",
    "knn_probe",
    "linear_probe",
    "plot_confusion_matrix",
    "predict_logits",
]


@dataclass(frozen=True)
class ClassificationMetrics:
    """Top-1 accuracy, per-class accuracy (recall; NaN for a class absent from the test labels)
    and the confusion matrix (rows: true class, columns: predicted class)."""

    accuracy: float
    per_class_accuracy: np.ndarray
    confusion: np.ndarray

    @property
    def num_samples(self) -> int:
        return int(self.confusion.sum())


def classification_metrics(
    true_labels: Sequence[int] | np.ndarray,
    predicted_labels: Sequence[int] | np.ndarray,
    num_classes: int,
) -> ClassificationMetrics:
    """Accuracy, per-class accuracy and confusion matrix of integer predictions."""
    true_labels = _as_label_array(true_labels, "true_labels")
    predicted_labels = _as_label_array(predicted_labels, "predicted_labels")
    if true_labels.shape != predicted_labels.shape:
        raise InvalidInputError(f"got {true_labels.size} true labels but {predicted_labels.size} predictions")
    if true_labels.size == 0:
        raise InvalidInputError("no labels to evaluate")
    top = max(int(true_labels.max()), int(predicted_labels.max()))
    if top >= num_classes:
        raise InvalidInputError(f"label {top} is out of range for num_classes={num_classes}")
    confusion = confusion_matrix(true_labels, predicted_labels, labels=np.arange(num_classes))
    support = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(support > 0, np.diag(confusion) / support, np.nan)  # NaN: none in the test labels
    return ClassificationMetrics(
        accuracy=float(np.trace(confusion) / true_labels.size), per_class_accuracy=per_class, confusion=confusion
    )


def _as_label_array(labels: Sequence[int] | np.ndarray, name: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise InvalidInputError(f"{name} must be a 1-D array of integer class indices")
    if labels.size and labels.min() < 0:
        raise InvalidInputError(f"{name} must be non-negative class indices, got {labels.min()}")
    return labels.astype(np.int64)


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    image_paths: Sequence[str | Path],
    transform: Transform,
    *,
    batch_size: int = 128,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    progress: bool = True,
) -> np.ndarray:
    """Class logits (float32, one row per image) of ``model`` in eval mode, batched."""
    device = resolve_device(device)
    model.eval().to(device)
    dataset = ImageListDataset(image_paths, None, transform)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )
    outputs = []
    for images, _ in Progress(loader, "predict", unit="batch", shown=progress):
        with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
            logits = model(images.to(device, non_blocking=True))
        outputs.append(logits.float().cpu().numpy())
    return np.concatenate(outputs)


def evaluate_finetuned(
    model: nn.Module,
    image_paths: Sequence[str | Path],
    labels: Sequence[int] | np.ndarray,
    transform: Transform,
    *,
    num_classes: int,
    batch_size: int = 128,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    progress: bool = True,
) -> ClassificationMetrics:
    """Top-1 metrics of a finetuned classifier on labelled images (e.g. the test split).

    ``transform`` is the evaluation transform (``eval_transform(image_size, mean, std)``).
    """
    labels = _as_label_array(labels, "labels")
    if labels.size != len(image_paths):
        raise InvalidInputError(f"got {labels.size} labels for {len(image_paths)} images")
    if labels.size == 0:
        raise InvalidInputError("no test images to evaluate on")
    logits = predict_logits(
        model,
        image_paths,
        transform,
        batch_size=batch_size,
        device=device,
        num_workers=num_workers,
        progress=progress,
    )
    if logits.shape[1] != num_classes:
        raise InvalidInputError(f"the model outputs {logits.shape[1]} classes, expected {num_classes}")
    return classification_metrics(labels, logits.argmax(axis=1), num_classes)


def _check_features(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    num_classes: int | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Validate the frozen-feature inputs; return L2-normalised float32 features and labels."""
    train_labels = _as_label_array(train_labels, "train_labels")
    test_labels = _as_label_array(test_labels, "test_labels")
    arrays = []
    for name, features, labels in (
        ("train_features", train_features, train_labels),
        ("test_features", test_features, test_labels),
    ):
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2 or features.shape[0] != labels.size:
            raise InvalidInputError(
                f"{name} must be a 2-D array with one row per label: got shape {features.shape} "
                f"for {labels.size} labels"
            )
        if features.shape[0] == 0:
            raise InvalidInputError(f"{name} is empty")
        if not np.isfinite(features).all():
            raise InvalidInputError(f"{name} contains NaN or infinite values")
        arrays.append(features)
    if arrays[0].shape[1] != arrays[1].shape[1]:
        raise InvalidInputError(
            f"train and test features differ in dimension: {arrays[0].shape[1]} vs {arrays[1].shape[1]}"
        )
    if np.unique(train_labels).size < 2:
        raise InvalidInputError("train_labels hold a single class; a classifier needs at least two")
    needed = int(max(train_labels.max(), test_labels.max())) + 1
    num_classes = needed if num_classes is None else num_classes
    if needed > num_classes:
        raise InvalidInputError(f"label {needed - 1} is out of range for num_classes={num_classes}")
    train_unit, test_unit = (a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12) for a in arrays)
    return train_unit, train_labels, test_unit, test_labels, num_classes


def linear_probe(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    *,
    num_classes: int | None = None,
    inverse_regularization: float = 10.0,
    max_iter: int = 1000,
) -> ClassificationMetrics:
    """Multinomial logistic regression on L2-normalised frozen features (deterministic L-BFGS).

    ``inverse_regularization`` is scikit-learn's ``C``, fixed rather than tuned per run. On
    EfficientNet-Lite0 Fashion-MNIST features (100 to 1,000 labelled items) C = 10 was within
    0.6 points of the best of 0.1..1000 at every size. The fit runs with single-threaded BLAS:
    these problems are small, and with busy cores BLAS/OpenMP threads spin-waiting on each other
    turned a 0.2 s fit into 12 s.
    """
    train_x, train_y, test_x, test_y, num_classes = _check_features(
        train_features, train_labels, test_features, test_labels, num_classes
    )
    classifier = LogisticRegression(C=inverse_regularization, max_iter=max_iter)
    with threadpool_limits(limits=1):
        classifier.fit(train_x, train_y)
        predicted = classifier.predict(test_x)
    return classification_metrics(test_y, predicted, num_classes)


def knn_probe(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    *,
    num_classes: int | None = None,
    k: int = defaults.KNN_K,
    temperature: float = 0.07,
    batch_size: int = 2048,
) -> ClassificationMetrics:
    """Weighted cosine kNN as in DINO's evaluation (k = 20, votes weighted by exp(sim / 0.07)).

    With fewer than ``k`` training items all of them vote.
    """
    if k < 1:
        raise InvalidInputError(f"k must be >= 1, got {k}")
    if temperature <= 0:
        raise InvalidInputError(f"temperature must be positive, got {temperature}")
    train_x, train_y, test_x, test_y, num_classes = _check_features(
        train_features, train_labels, test_features, test_labels, num_classes
    )
    train = torch.from_numpy(train_x)
    train_targets = torch.from_numpy(train_y)
    neighbours = min(k, train.shape[0])
    predictions = []
    for start in range(0, test_x.shape[0], batch_size):
        similarity = torch.from_numpy(test_x[start : start + batch_size]) @ train.T
        top_similarity, top_index = similarity.topk(neighbours, dim=1)
        votes = torch.zeros(similarity.shape[0], num_classes)
        votes.scatter_add_(1, train_targets[top_index], (top_similarity / temperature).exp())
        predictions.append(votes.argmax(dim=1))
    return classification_metrics(test_y, torch.cat(predictions).numpy(), num_classes)


def plot_confusion_matrix(
    confusion: np.ndarray,
    class_names: Sequence[str],
    *,
    normalize: bool = True,
    title: str = "Confusion matrix",
) -> Figure:
    """Heat-map of a confusion matrix (rows: true, columns: predicted); with ``normalize`` each
    row shows fractions of its true class. Drawn by scikit-learn's ``ConfusionMatrixDisplay``
    (cell values up to 30 classes). Returns a Figure (``fig.savefig(path)`` or
    ``mlflow.log_figure``); no pyplot figure is created."""
    confusion = np.asarray(confusion)
    n = len(class_names)
    if confusion.shape != (n, n):
        raise InvalidInputError(f"confusion must be {n}x{n} for {n} class names, got {confusion.shape}")
    if normalize:
        support = confusion.sum(axis=1, keepdims=True)
        values = np.divide(confusion, support, out=np.zeros(confusion.shape), where=support > 0)
    else:
        values = confusion
    size = max(4.0, 0.5 * n + 2)
    figure = Figure(figsize=(size + 1, size), layout="constrained")
    axes = figure.add_subplot()
    display = ConfusionMatrixDisplay(values, display_labels=list(class_names)).plot(
        ax=axes,
        cmap="Blues",
        colorbar=False,
        include_values=0 < n <= 30,
        values_format=".2f" if normalize else ".0f",
        im_kw={"vmin": 0, "vmax": 1 if normalize else None},
        text_kw={"fontsize": 7},
    )
    if display.text_ is not None:  # white on dark cells, black on light ones, as before sklearn drew it
        threshold = values.max() / 2 if values.size else 0
        for (row, column), text in np.ndenumerate(display.text_):
            text.set_color("white" if values[row, column] > threshold else "black")
    figure.colorbar(display.im_, ax=axes, fraction=0.046)
    axes.set_xticks(range(n), labels=list(class_names), rotation=45, ha="right")
    axes.set(xlabel="predicted", ylabel="true", title=title)
    return figure

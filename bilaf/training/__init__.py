"""Finetuning and evaluation of a pretrained classifier on the annotated selection.

Usage, in pipeline order::

    labels = validate_labeled_selection(ids, annotations, classes, test_labels)
    result = finetune(model, train_paths, labels.train, mean=mean, std=std)
    metrics = evaluate_finetuned(result.model, test_paths, labels.test,
                                 eval_transform(128, mean, std), num_classes=len(classes))
    save_finetuned(result.model, ModelMetadata(...), "artifacts/finetuned")

plus ``linear_probe`` / ``knn_probe`` on frozen features (paper Table 10).
"""

from bilaf.features.transforms import eval_transform, train_transform
from bilaf.training.checkpoint import ModelMetadata, load_finetuned, save_finetuned
from bilaf.training.data import ImageListDataset
from bilaf.training.evaluate import (
    ClassificationMetrics,
    classification_metrics,
    evaluate_finetuned,
    knn_probe,
    linear_probe,
    plot_confusion_matrix,
    predict_logits,
)
from bilaf.training.finetune import (
    EpochStats,
    FinetuneConfig,
    FinetuneResult,
    build_lr_scheduler,
    finetune,
    set_drop_path_rate,
)
from bilaf.training.labels import (
    ValidatedLabels,
    encode_labels,
    validate_labeled_selection,
)

__all__ = [
    "ClassificationMetrics",
    "EpochStats",
    "FinetuneConfig",
    "FinetuneResult",
    "ImageListDataset",
    "ModelMetadata",
    "ValidatedLabels",
    "build_lr_scheduler",
    "classification_metrics",
    "encode_labels",
    "eval_transform",
    "evaluate_finetuned",
    "finetune",
    "knn_probe",
    "linear_probe",
    "load_finetuned",
    "plot_confusion_matrix",
    "predict_logits",
    "save_finetuned",
    "set_drop_path_rate",
    "train_transform",
    "validate_labeled_selection",
]

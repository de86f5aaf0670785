"""Validation of the annotated selection before any training starts.

The pipeline hands over the ids the selection picked, the labels the annotators returned, the known
class names and the labels of the held-out test split. Everything that would make finetuning or
evaluation meaningless is rejected here with a ValueError that names the offending values, so a
run stops before it spends minutes training on bad input.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from bilaf.errors import InvalidInputError

__all__ = ["ValidatedLabels", "encode_labels", "validate_labeled_selection"]

_SHOWN = 5  # how many offending values an error message lists


@dataclass(frozen=True)
class ValidatedLabels:
    """Integer class indices (positions in ``classes``) of the selection and of the test split."""

    train: np.ndarray
    test: np.ndarray


def _is_missing(label: object) -> bool:
    """None, NaN, pandas.NA/NaT and blank strings mark a label the annotators did not give."""
    if isinstance(label, str):
        return not label.strip()
    return np.ndim(label) == 0 and bool(pd.isna(label))


def _preview(values: Sequence[object]) -> str:
    shown = ", ".join(repr(v) for v in values[:_SHOWN])
    return shown + (", ..." if len(values) > _SHOWN else "")


def encode_labels(labels: Sequence[object], classes: Sequence[str], *, what: str) -> np.ndarray:
    """Map labels to integer class indices; a label is a class name or an index into ``classes``.

    Raises ValueError naming the unknown labels and the known classes. ``what`` names the label set
    in the message (e.g. "selection", "test split").
    """
    index = {str(name): i for i, name in enumerate(classes)}
    encoded = np.empty(len(labels), dtype=np.int64)
    unknown: list[object] = []
    for position, label in enumerate(labels):
        if isinstance(label, (bool, np.bool_)):
            unknown.append(label)
        elif isinstance(label, (int, np.integer)) or (
            isinstance(label, (float, np.floating)) and float(label).is_integer()
        ):
            value = int(label)
            if 0 <= value < len(classes):
                encoded[position] = value
            else:
                unknown.append(label)
        elif str(label) in index:
            encoded[position] = index[str(label)]
        else:
            unknown.append(label)
    if unknown:
        distinct = list(dict.fromkeys(unknown))
        raise InvalidInputError(
            f"{what}: {len(unknown)} label(s) name unknown classes: {_preview(distinct)}; "
            f"known classes are {list(classes)} (or their indices 0..{len(classes) - 1})"
        )
    return encoded


def validate_labeled_selection(
    ids: Sequence[Hashable],
    labels: Mapping[Hashable, object] | Sequence[object],
    classes: Sequence[str],
    test_labels: Sequence[object] | None,
) -> ValidatedLabels:
    """Check the annotated selection and the test split; return their integer class indices.

    ``labels`` is either a mapping id -> label (ids absent from it count as missing) or a sequence
    aligned with ``ids`` in which None, NaN, pandas.NA or "" mark a missing label. A label is a
    class name from ``classes`` or an integer index into it.

    Raises ValueError when: the selection is empty; labels are missing (says how many and which
    ids); labels name unknown classes (names them and the known classes); the selection holds
    fewer than two distinct classes; the test split is absent or empty, or names unknown classes.
    """
    if len(classes) < 2:
        raise InvalidInputError(f"need at least two classes to train a classifier, got {list(classes)}")
    if len(set(map(str, classes))) != len(classes):
        raise InvalidInputError(f"class names must be unique, got {list(classes)}")
    ids = list(ids)
    if not ids:
        raise InvalidInputError("the selection is empty: nothing to finetune on")
    if isinstance(labels, Mapping):
        aligned = [labels.get(item_id) for item_id in ids]
    else:
        aligned = list(labels)
        if len(aligned) != len(ids):
            raise InvalidInputError(f"labels must be aligned with ids: got {len(aligned)} labels for {len(ids)} ids")
    missing = [item_id for item_id, label in zip(ids, aligned) if _is_missing(label)]
    if missing:
        raise InvalidInputError(
            f"{len(missing)} of {len(ids)} selected items have no label, e.g. ids {_preview(missing)}"
        )
    train = encode_labels(aligned, classes, what="selection")
    present = np.unique(train)
    if present.size < 2:
        raise InvalidInputError(
            f"the selection of {len(ids)} items holds a single class ({classes[int(present[0])]!r}); "
            "a classifier needs at least two"
        )
    if test_labels is None or len(test_labels) == 0:
        raise InvalidInputError("the test split is absent or empty: there is nothing to evaluate on")
    test_list = list(test_labels)
    test_missing = sum(_is_missing(label) for label in test_list)
    if test_missing:
        raise InvalidInputError(f"{test_missing} of {len(test_list)} test items have no label")
    test = encode_labels(test_list, classes, what="test split")
    return ValidatedLabels(train=train, test=test)

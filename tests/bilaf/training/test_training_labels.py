"""validate_labeled_selection: every bad input stops the run with a message naming the problem."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bilaf.training import validate_labeled_selection

CLASSES = ["cat", "dog", "bird"]
IDS = [f"img{i}" for i in range(6)]
GOOD = ["cat", "dog", "bird", "dog", "cat", "cat"]
TEST = ["dog", "cat", "bird"]


def test_valid_names_and_indices_are_encoded_as_class_positions() -> None:
    result = validate_labeled_selection(IDS, GOOD, CLASSES, TEST)
    np.testing.assert_array_equal(result.train, [0, 1, 2, 1, 0, 0])
    np.testing.assert_array_equal(result.test, [1, 0, 2])
    # integer indices, and floats from a pandas column that once held NaN, mean the same
    as_indices = validate_labeled_selection(IDS, [0, 1, 2, 1, 0, 0], CLASSES, np.array([1, 0, 2]))
    np.testing.assert_array_equal(as_indices.train, result.train)
    column = pd.Series([0.0, 1.0, 2.0, 1.0, 0.0, 0.0])
    np.testing.assert_array_equal(validate_labeled_selection(IDS, column, CLASSES, TEST).train, result.train)


def test_mapping_of_annotations_is_looked_up_by_id() -> None:
    annotations = dict(zip(reversed(IDS), reversed(GOOD)))
    result = validate_labeled_selection(IDS, annotations, CLASSES, TEST)
    np.testing.assert_array_equal(result.train, [0, 1, 2, 1, 0, 0])


@pytest.mark.parametrize("missing", [None, float("nan"), pd.NA, "", "  "])
def test_missing_labels_name_count_and_ids(missing: object) -> None:
    labels = list(GOOD)
    labels[1] = missing
    labels[4] = missing
    with pytest.raises(ValueError, match=r"2 of 6 selected items have no label.*'img1', 'img4'"):
        validate_labeled_selection(IDS, labels, CLASSES, TEST)


def test_ids_absent_from_annotation_mapping_are_missing() -> None:
    annotations = {"img0": "cat", "img1": "dog"}
    with pytest.raises(ValueError, match=r"4 of 6 selected items have no label.*'img2'"):
        validate_labeled_selection(IDS, annotations, CLASSES, TEST)


def test_unknown_class_names_are_listed_with_the_known_classes() -> None:
    labels = ["cat", "horse", "dog", "cow", "horse", "cat"]
    with pytest.raises(ValueError) as error:
        validate_labeled_selection(IDS, labels, CLASSES, TEST)
    message = str(error.value)
    assert "3 label(s) name unknown classes: 'horse', 'cow'" in message
    assert "['cat', 'dog', 'bird']" in message


def test_out_of_range_class_index_is_unknown() -> None:
    with pytest.raises(ValueError, match="unknown classes: 7"):
        validate_labeled_selection(IDS, [0, 1, 2, 7, 0, 0], CLASSES, TEST)


def test_single_class_selection_is_rejected() -> None:
    with pytest.raises(ValueError, match="single class \\('dog'\\)"):
        validate_labeled_selection(IDS, ["dog"] * 6, CLASSES, TEST)


@pytest.mark.parametrize("test_labels", [None, [], np.array([], dtype=np.int64)])
def test_absent_or_empty_test_split_is_rejected(test_labels: object) -> None:
    with pytest.raises(ValueError, match="test split is absent or empty"):
        validate_labeled_selection(IDS, GOOD, CLASSES, test_labels)


def test_unknown_test_labels_are_rejected() -> None:
    with pytest.raises(ValueError, match="test split: 1 label\\(s\\) name unknown classes: 'fish'"):
        validate_labeled_selection(IDS, GOOD, CLASSES, ["cat", "fish"])


def test_misaligned_labels_and_empty_selection_are_rejected() -> None:
    with pytest.raises(ValueError, match="got 5 labels for 6 ids"):
        validate_labeled_selection(IDS, GOOD[:5], CLASSES, TEST)
    with pytest.raises(ValueError, match="selection is empty"):
        validate_labeled_selection([], [], CLASSES, TEST)

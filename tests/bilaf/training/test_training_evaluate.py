"""Metrics, frozen-feature learners (linear probe, kNN) and the confusion-matrix plot."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.figure import Figure
from sklearn.metrics import accuracy_score, confusion_matrix, recall_score
from sklearn.neighbors import KNeighborsClassifier

from bilaf.training import (
    classification_metrics,
    knn_probe,
    linear_probe,
    plot_confusion_matrix,
)


def test_metrics_agree_with_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    true = rng.integers(0, 5, 400)
    predicted = np.where(rng.random(400) < 0.7, true, rng.integers(0, 5, 400))
    metrics = classification_metrics(true, predicted, num_classes=6)  # class 5 never occurs
    assert metrics.accuracy == pytest.approx(accuracy_score(true, predicted))
    np.testing.assert_array_equal(metrics.confusion, confusion_matrix(true, predicted, labels=range(6)))
    np.testing.assert_allclose(
        metrics.per_class_accuracy[:5], recall_score(true, predicted, average=None, labels=range(5))
    )
    assert np.isnan(metrics.per_class_accuracy[5])
    assert metrics.num_samples == 400


def test_metrics_reject_bad_labels() -> None:
    with pytest.raises(ValueError, match="out of range for num_classes=3"):
        classification_metrics([0, 1, 3], [0, 1, 2], num_classes=3)
    with pytest.raises(ValueError, match="3 true labels but 2 predictions"):
        classification_metrics([0, 1, 2], [0, 1], num_classes=3)


def test_frozen_feature_learners_are_far_above_chance_on_digits(digits_images) -> None:
    train, test = digits_images.train, digits_images.test
    args = (train.pixels, train.labels, test.pixels, test.labels)
    probe = linear_probe(*args, num_classes=10)
    knn = knn_probe(*args, num_classes=10)
    assert probe.accuracy > 0.9  # chance is 0.1
    assert knn.accuracy > 0.9
    assert probe.num_samples == knn.num_samples == test.labels.size
    # deterministic
    assert linear_probe(*args, num_classes=10).accuracy == probe.accuracy


def test_knn_with_one_neighbour_is_cosine_nearest_neighbour(digits_images) -> None:
    train, test = digits_images.train, digits_images.test
    reference = KNeighborsClassifier(n_neighbors=1, metric="cosine", algorithm="brute")
    expected = reference.fit(train.pixels, train.labels).predict(test.pixels)
    metrics = knn_probe(train.pixels, train.labels, test.pixels, test.labels, k=1)
    assert metrics.accuracy == pytest.approx(accuracy_score(test.labels, expected))


def test_frozen_learners_work_with_tiny_selections(digits_images) -> None:
    """A 0.5 % budget can select fewer items than k; every class need not be present."""
    train, test = digits_images.train, digits_images.test
    keep = np.flatnonzero(train.labels < 5)[:12]
    args = (train.pixels[keep], train.labels[keep], test.pixels, test.labels)
    knn = knn_probe(*args, num_classes=10, k=20)
    probe = linear_probe(*args, num_classes=10)
    for metrics in (knn, probe):
        assert metrics.confusion.shape == (10, 10)
        assert metrics.confusion[:, 5:].sum() == 0  # unseen classes are never predicted
        assert metrics.accuracy > 0.25  # half the classes are learnable: chance would be 0.1


def test_frozen_learners_reject_bad_features() -> None:
    train = np.ones((4, 3), dtype=np.float32)
    labels = np.array([0, 1, 0, 1])
    with pytest.raises(ValueError, match="differ in dimension: 3 vs 2"):
        knn_probe(train, labels, np.ones((2, 2)), np.array([0, 1]))
    with pytest.raises(ValueError, match="one row per label"):
        linear_probe(train, labels[:3], train, labels)
    bad = train.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        linear_probe(bad, labels, train, labels)
    with pytest.raises(ValueError, match="single class"):
        knn_probe(train, np.zeros(4, dtype=int), train, labels)


def test_confusion_plot_renders_to_png(tmp_path) -> None:
    confusion = np.array([[5, 1, 0], [2, 7, 1], [0, 0, 0]])
    figure = plot_confusion_matrix(confusion, ["a", "b", "c"])
    assert isinstance(figure, Figure)
    path = tmp_path / "confusion.png"
    figure.savefig(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = figure.axes[0].images[0].get_array()
    np.testing.assert_allclose(image[1], [0.2, 0.7, 0.1])  # rows are fractions of the true class
    np.testing.assert_allclose(image[2], [0, 0, 0])  # a class without samples stays empty
    with pytest.raises(ValueError, match="must be 2x2"):
        plot_confusion_matrix(confusion, ["a", "b"])


def test_confusion_plot_shows_title_axes_labels_and_cell_values() -> None:
    confusion = np.array([[5, 1, 0], [2, 7, 1], [0, 0, 0]])
    figure = plot_confusion_matrix(confusion, ["a", "b", "c"], title="on the test split")
    axes = figure.axes[0]
    assert (axes.get_title(), axes.get_xlabel(), axes.get_ylabel()) == ("on the test split", "predicted", "true")
    assert [label.get_text() for label in axes.get_xticklabels()] == ["a", "b", "c"]
    assert [label.get_text() for label in axes.get_yticklabels()] == ["a", "b", "c"]
    assert axes.images[0].get_clim() == (0, 1)
    assert [text.get_text() for text in axes.texts][3:6] == ["0.20", "0.70", "0.10"]
    # white on cells above half the largest value, black elsewhere (the figure's bytes are unchanged
    # since sklearn draws it: its own rule would colour the text with the colour map's ends)
    assert [text.get_color() for text in axes.texts][3:6] == ["black", "white", "black"]
    assert len(figure.axes) == 2  # the heat-map and its colour bar

    counts = plot_confusion_matrix(confusion, ["a", "b", "c"], normalize=False).axes[0]
    assert [text.get_text() for text in counts.texts] == [str(v) for v in confusion.ravel()]
    np.testing.assert_array_equal(counts.images[0].get_array(), confusion)

    many = plot_confusion_matrix(np.eye(31, dtype=int), [str(i) for i in range(31)]).axes[0]
    assert not many.texts  # too many cells to print

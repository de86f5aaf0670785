"""Selection that knows what earlier rounds left: labeled and pending items are never picked,
coverage continues from them, and the label-aware boundary stage picks near real class borders."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from sklearn.linear_model import LogisticRegression

from bilaf.selection import ClassRegions, SelectionResult, class_regions, select, select_class_boundary, select_cores

ALL_METHODS = [
    ("random", {}),
    ("kmeans", {}),
    ("kcenter", {}),
    ("activeft", {"n_iterations": 40}),
    ("bilaf", {"n_iterations": 40}),
    ("bilaf", {"n_cores": 0}),
    ("margin", {}),
]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _earlier_round(labels: np.ndarray, n_labeled: int, n_pending: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels of ``n_labeled`` random items (-1 elsewhere) and ``n_pending`` other items."""
    order = np.random.default_rng(seed).permutation(len(labels))
    known = np.full(len(labels), -1)
    known[order[:n_labeled]] = labels[order[:n_labeled]]
    return known, np.sort(order[n_labeled : n_labeled + n_pending])


@pytest.mark.parametrize(("method", "options"), ALL_METHODS)
def test_labeled_and_pending_items_are_never_picked(mixture, method, options):
    features, truth = mixture(1500, 6, 12, 2.0, 0)
    labels, pending = _earlier_round(truth, 60, 40)
    result = select(features, 70, method, seed=1, labels=labels, pending=pending, **options)
    picked = np.asarray(result.indices)
    assert len(picked) == 70 and len(set(picked.tolist())) == 70
    assert not np.isin(picked, np.flatnonzero(labels >= 0)).any()
    assert not np.isin(picked, pending).any()
    assert result.params["labeled"] == 60 and result.params["pending"] == 40


@pytest.mark.parametrize(("method", "options"), ALL_METHODS[:5])
def test_nothing_known_gives_the_one_shot_selection(mixture, method, options):
    features, _ = mixture(900, 5, 10, 2.0, 1)
    one_shot = select(features, 40, method, seed=2, **options)
    unlabeled = select(features, 40, method, seed=2, labels=np.full(900, -1), pending=[], **options)
    assert np.array_equal(one_shot.indices, unlabeled.indices)


def _old_and_new_regions(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three old blobs, every tenth item of them labeled, and one new blob nobody has seen."""
    rng = np.random.default_rng(seed)
    means = np.eye(4, 16) * 8.0
    blob = np.repeat(np.arange(4), 300)
    features = (means[blob] + rng.normal(size=(1200, 16))).astype(np.float32)
    labels = np.full(1200, -1)
    old = np.flatnonzero(blob < 3)[::10]
    labels[old] = blob[old]
    return features, labels, blob


@pytest.mark.parametrize(
    ("method", "options"), [("activeft", {"n_iterations": 150, "learning_rate": 1e-2}), ("kmeans", {}), ("kcenter", {})]
)
def test_coverage_continues_from_the_anchors_into_new_data(method, options):
    features, labels, blob = _old_and_new_regions()
    picks = select_cores(features, 8, method, seed=0, labels=labels, **options).indices
    anchored = np.mean(blob[picks] == 3)
    one_shot = np.mean(blob[select_cores(features, 8, method, seed=0, **options).indices] == 3)
    assert anchored >= 0.5 and anchored > one_shot  # the new blob is a quarter of the pool


def test_kcenter_first_pick_is_the_item_farthest_from_every_anchor(mixture):
    features, truth = mixture(700, 4, 8, 2.0, 3)
    labels, pending = _earlier_round(truth, 25, 10)
    picks = select(features, 5, "kcenter", labels=labels, pending=pending).indices
    unit = _unit(features)
    anchors = np.flatnonzero(labels >= 0).tolist() + pending.tolist()
    distance = cdist(unit, unit[anchors]).min(axis=1)
    assert picks[0] == int(np.argmax(distance))
    distance = np.minimum(distance, cdist(unit, unit[picks[:1]])[:, 0])
    assert picks[1] == int(np.argmax(distance))


def test_margin_picks_the_smallest_probe_margins(mixture):
    features, truth = mixture(800, 3, 8, 1.5, 4)
    labels, _ = _earlier_round(truth, 45, 0)
    result = select(features, 30, "margin", labels=labels)
    labeled = labels >= 0
    probe = LogisticRegression(C=10.0, max_iter=1000).fit(_unit(features[labeled]), labels[labeled])
    probabilities = np.sort(probe.predict_proba(_unit(features[~labeled])), axis=1)
    margins = probabilities[:, -1] - probabilities[:, -2]
    expected = np.flatnonzero(~labeled)[np.lexsort((np.flatnonzero(~labeled), margins))[:30]]
    assert np.array_equal(result.indices, expected)
    assert [p.margin for p in result.picks] == sorted(p.margin for p in result.picks)


def _two_classes(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two overlapping Gaussian classes split by the hyperplane x0 = 0 (the true border)."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 2, 3000)
    features = rng.normal(size=(3000, 6)).astype(np.float32)
    features[:, 0] += np.where(truth == 1, 1.5, -1.5)
    features[:, 1] += 6.0  # away from the origin, so unit vectors keep the geometry
    return features, truth


def test_label_aware_boundary_picks_lie_near_the_real_class_border():
    features, truth = _two_classes()
    labels, _ = _earlier_round(truth, 40, 0)
    boundary = select(features, 60, "bilaf", n_cores=0, labels=labels, seed=0)
    coverage = select(features, 60, "activeft", labels=labels, seed=0, n_iterations=50)
    assert {p.role for p in boundary.picks} == {"boundary"}
    assert all(p.rival_class != p.predicted_class for p in boundary.picks)
    to_border = np.abs(features[:, 0] - features[:, 0].mean())
    assert to_border[boundary.indices].mean() < 0.7 * to_border.mean()  # measured: 0.53
    assert to_border[coverage.indices].mean() > 0.9 * to_border.mean()  # representative picks are not


def test_label_aware_round_spends_its_cores_on_coverage_first(mixture):
    features, truth = mixture(1200, 5, 10, 2.0, 5)
    labels, pending = _earlier_round(truth, 50, 20)
    result = select(features, 40, "bilaf", n_cores=10, labels=labels, pending=pending, seed=0, n_iterations=40)
    roles = [p.role for p in result.picks]
    assert roles[:10] == ["core"] * 10 and roles[10:] == ["boundary"] * 30
    assert sum(stats.budget for stats in result.classes) == 30


def test_class_budget_tops_up_the_classes_earlier_rounds_left_short():
    features, truth = _two_classes(1)
    labels = np.full(len(truth), -1)
    labels[np.flatnonzero(truth == 0)[:40]] = 0  # forty labels of class 0, four of class 1
    labels[np.flatnonzero(truth == 1)[:4]] = 1
    result = select(features, 40, "bilaf", n_cores=0, labels=labels)
    shares = {stats.class_id: stats.budget for stats in result.classes}
    assert shares[1] > shares[0]


def test_class_regions_grow_from_the_labeled_items_and_drop_the_periphery():
    features, truth = _two_classes(2)
    labels, _ = _earlier_round(truth, 30, 0)
    regions = class_regions(features, labels, removal_ratio=0.2)
    labeled = np.flatnonzero(labels >= 0)
    assert np.array_equal(regions.assignment[labeled], labels[labeled])
    assert regions.kept[labeled].all()
    for stats in regions.classes:
        members = np.flatnonzero(regions.assignment == stats.class_id)
        first = members[np.argsort(regions.absorption_rank[members])][: stats.labeled]
        assert set(first.tolist()) == set(labeled[labels[labeled] == stats.class_id].tolist())
        assert stats.denoised_size == len(members) - int(0.2 * len(members))
        dropped = members[~regions.kept[members]]
        centre = features[labeled[labels[labeled] == stats.class_id]].mean(axis=0)
        kept = members[regions.kept[members]]
        assert (
            np.linalg.norm(features[dropped] - centre, axis=1).mean()
            > np.linalg.norm(features[kept] - centre, axis=1).mean()
        )
    assert ClassRegions.from_dict(regions.to_dict()) == regions


def test_stages_compose_to_the_label_aware_method():
    features, truth = _two_classes(3)
    labels, pending = _earlier_round(truth, 30, 10)
    whole = select(features, 25, "bilaf", n_cores=0, labels=labels, pending=pending)
    staged = select_class_boundary(features, class_regions(features, labels, pending=pending), 25)
    assert np.array_equal(whole.indices, staged.indices)
    assert SelectionResult.from_dict(staged.to_dict()) == staged


def test_pending_without_labels_runs_one_shot_bilaf_on_the_rest(mixture):
    features, _ = mixture(1000, 5, 10, 2.0, 6)
    pending = np.arange(0, 1000, 7)
    result = select(features, 50, "bilaf", n_cores=12, pending=pending, seed=0, n_iterations=30)
    assert not np.isin(result.indices, pending).any()
    assert [p.role for p in result.picks].count("core") == 12
    assert all(stats.core_index not in pending for stats in result.clusters)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"labels": np.zeros(10, dtype=int)}, "one entry per item"),
        ({"labels": np.full(200, -1.0)}, "integer class indices"),
        ({"labels": np.full(200, -3)}, ">= 0 or -1"),
        ({"pending": [5, 5]}, "more than once"),
        ({"pending": [250]}, "outside the pool"),
        ({"labels": np.r_[0, np.full(199, -1)], "pending": [0]}, "both labeled and pending"),
        ({"pending": np.arange(190)}, "larger than the 10 items neither labeled nor pending"),
    ],
)
def test_bad_knowledge_is_refused_with_the_problem_named(kwargs, message):
    features = np.random.default_rng(0).normal(size=(200, 5)).astype(np.float32)
    with pytest.raises(ValueError, match=message):
        select(features, 20, "random", **kwargs)


@pytest.mark.parametrize(
    ("method", "kwargs", "message"),
    [
        ("margin", {}, "needs labels of at least 2 classes"),
        ("margin", {"labels": np.r_[np.zeros(5, int), np.full(195, -1)]}, "needs labels of at least 2 classes"),
        ("bilaf", {"n_cores": 0}, "0 is allowed only once labels"),
    ],
)
def test_methods_refuse_what_they_cannot_do(method, kwargs, message):
    features = np.random.default_rng(1).normal(size=(200, 5)).astype(np.float32) + 3.0
    with pytest.raises(ValueError, match=message):
        select(features, 20, method, **kwargs)

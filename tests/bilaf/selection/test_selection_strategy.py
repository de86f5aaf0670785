"""What a round runs, decided once (`bilaf.selection.strategy`) for `select` and the pipeline, and
the two decisions where the pipeline and `select` once differed (docs/algorithm.md, "select and
the pipeline")."""

from __future__ import annotations

import numpy as np
import pytest

from bilaf.selection import select, select_cores
from bilaf.selection.strategy import ONE_SHOT, free_items, round_strategy


def test_a_round_is_one_shot_until_labels_of_two_classes_exist():
    none = np.full(10, -1)
    one_class = np.r_[0, 0, np.full(8, -1)]
    two_classes = np.r_[0, 1, np.full(8, -1)]
    assert round_strategy(10, method="margin") == ONE_SHOT
    assert round_strategy(10, none, [3, 4], method="margin") == ONE_SHOT
    assert round_strategy(10, one_class, method="margin") == ONE_SHOT
    assert round_strategy(10, two_classes, method="margin") == "margin"


def test_the_free_items_are_those_neither_labeled_nor_pending():
    labels = np.r_[0, -1, 1, -1, -1, -1]
    assert free_items(6).tolist() == [0, 1, 2, 3, 4, 5]
    assert free_items(6, labels, [4]).tolist() == [1, 3, 5]


def test_bilaf_measures_its_cores_as_select_cores_does_whatever_the_stage_2_variant():
    """Decision 1: the variant's `normalize` is a stage-2 switch; k-means cores are on unit vectors
    in `select` as in `select_cores` (and so in the pipeline's core_centers stage)."""
    rng = np.random.default_rng(3)
    features = (rng.normal(size=(400, 6)) * rng.uniform(0.2, 5.0, size=(400, 1)) + 1.0).astype(np.float32)
    cores = select_cores(features, 12, "kmeans", seed=1)
    raw = select_cores(features, 12, "kmeans", seed=1, normalize=False)
    assert not np.array_equal(cores.indices, raw.indices)  # the features make the difference visible
    for variant in ("default", "repo"):
        result = select(features, 30, "bilaf", n_cores=12, core_method="kmeans", seed=1, variant=variant)
        assert np.array_equal(np.sort(result.core_indices), cores.indices), variant


@pytest.mark.parametrize(
    "known",
    [{"pending": [1, 2, 3]}, {"labels": np.r_[np.zeros(10, int), np.ones(10, int), np.full(380, -1)]}],
    ids=["pending", "labels of two classes"],
)
def test_the_repo_variant_runs_in_later_rounds_and_never_picks_a_known_item(known):
    """Decision 2: as the pipeline always did, a round with labeled or pending items runs with
    variant 'repo' (its stage-2 switches on the free items; class regions once label-aware)."""
    features = np.random.default_rng(4).normal(size=(400, 6)).astype(np.float32) + 2.0
    result = select(features, 24, "bilaf", n_cores=6, seed=0, variant="repo", n_iterations=30, **known)
    taken = set(known.get("pending", [])) | set(np.flatnonzero(known.get("labels", np.full(400, -1)) >= 0).tolist())
    assert len(result) == 24 and not set(result.indices.tolist()) & taken

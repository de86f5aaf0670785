"""BiLAF default variant: guarantees and behaviour on mixtures whose right answer is known."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from bilaf.selection import CORE_METHODS, _geometry, denoise, select, select_boundary, select_cores


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize(
    ("n_items", "n_components", "n_cores", "budget", "seed"),
    [
        (1200, 5, 10, 60, 0),
        (2000, 12, 40, 400, 1),
        (900, 3, 30, 31, 2),
        (600, 4, 8, 520, 3),
    ],
)
def test_default_variant_exact_budget_distinct_and_every_core(mixture, n_items, n_components, n_cores, budget, seed):
    features, _ = mixture(n_items, n_components, 16, 3.0, seed)
    result = select(features, budget, n_cores=n_cores, seed=seed, n_iterations=30)
    picked = result.indices.tolist()
    assert len(picked) == budget and len(set(picked)) == budget
    cores = [p.index for p in result.picks if p.role == "core"]
    assert len(cores) == n_cores and set(cores) <= set(picked)
    assert [p.rank for p in result.picks] == list(range(budget))
    shares = [stats.budget for stats in result.clusters]
    assert sum(shares) == budget
    assert all(1 <= s <= stats.denoised_size for s, stats in zip(shares, result.clusters))
    for cluster, stats in enumerate(result.clusters):
        in_cluster = [p for p in result.picks if p.cluster == cluster]
        assert len(in_cluster) == stats.budget
        assert in_cluster[0].role == "core" and in_cluster[0].index == stats.core_index


def test_budget_above_the_denoised_pool_is_refused(mixture):
    features, _ = mixture(400, 3, 8, 3.0, 4)
    cores = select_cores(features, 6, "kmeans", seed=0)
    pool = denoise(features, cores)
    with pytest.raises(ValueError, match="denoised pool size"):
        select_boundary(features, cores, pool, int(pool.kept.sum()) + 1)


def test_boundary_picks_lie_nearer_the_decision_boundary_than_cores(mixture):
    features, _ = mixture(3000, 6, 24, 1.2, 5)
    for core_method in ("activeft", "kmeans"):
        result = select(
            features,
            150,
            n_cores=12,
            core_method=core_method,
            **({"n_iterations": 50} if core_method == "activeft" else {}),
        )
        unit = _unit(features)
        to_cores = np.sort(cdist(unit, unit[result.core_indices]), axis=1)
        margin = to_cores[:, 1] - to_cores[:, 0]  # 0 on the decision boundary between two cores
        boundary = [p.index for p in result.picks if p.role == "boundary"]
        assert margin[boundary].mean() < 0.75 * margin.mean()
        assert margin[boundary].mean() < 0.25 * margin[result.core_indices].mean()


def test_denoising_removes_the_peripheral_items():
    rng = np.random.default_rng(6)
    means = np.array([[0.0, 0.0], [12.0, 0.0], [0.0, 12.0]])
    blobs = np.concatenate([mean + rng.normal(size=(300, 2)) for mean in means])
    directions = rng.normal(size=(30, 2))
    outliers = np.repeat(means, 10, axis=0) + 4.5 * _unit(directions)  # 4.5 sigma from a mean
    features = np.concatenate([blobs, outliers])
    cores = [int(np.argmin(((blobs - mean) ** 2).sum(1))) for mean in means]
    for variant in ("default", "repo"):
        pool = denoise(features, cores, variant=variant, normalize=False)
        removed = ~pool.kept
        assert removed[len(blobs) :].mean() >= 0.9
        to_own_core = np.linalg.norm(features - features[pool.cores[pool.assignment]], axis=1)
        assert to_own_core[removed].mean() > 1.5 * to_own_core[pool.kept].mean()
        assert pool.kept[pool.cores].all()


def _rival_counts(penalty: float) -> Counter:
    """One big cluster with a near rival (right) and two far ones (left, top)."""
    rng = np.random.default_rng(0)
    features = np.concatenate(
        [
            rng.normal(size=(600, 2)),
            rng.normal(size=(80, 2)) * 0.6 + [4.5, 0.0],
            rng.normal(size=(80, 2)) * 0.6 + [-7.0, 0.0],
            rng.normal(size=(80, 2)) * 0.6 + [0.0, 7.0],
        ]
    )
    cores = [
        int(np.argmin(((features - centre) ** 2).sum(1)))
        for centre in ([0.0, 0.0], [4.5, 0.0], [-7.0, 0.0], [0.0, 7.0])
    ]
    pool = denoise(features, cores, normalize=False)
    result = select_boundary(features, cores, pool, 24, penalty=penalty)
    big = int(np.flatnonzero(np.sort(cores) == cores[0])[0])
    return Counter(p.rival_center for p in result.picks if p.cluster == big and p.role == "boundary")


def test_opponent_penalty_spreads_picks_over_rival_centres():
    without = _rival_counts(penalty=1.0)
    with_penalty = _rival_counts(penalty=1.5)
    assert without.most_common(1)[0][1] >= 0.7 * without.total()
    assert with_penalty.most_common(1)[0][1] <= 0.5 * with_penalty.total()
    assert len(with_penalty) == 3


def test_penalty_factors_are_recorded_per_rival():
    rng = np.random.default_rng(1)
    features = np.concatenate(
        [rng.normal(size=(400, 2)), rng.normal(size=(60, 2)) + [5.0, 0], rng.normal(size=(60, 2)) + [-6.0, 0]]
    )
    cores = [0, 400, 460]
    result = select_boundary(features, cores, denoise(features, cores, normalize=False), 30, penalty=1.3)
    for cluster in range(3):
        seen: Counter = Counter()
        for pick in (p for p in result.picks if p.cluster == cluster and p.role == "boundary"):
            assert pick.penalty_factor == pytest.approx(1.3 ** seen[pick.rival_center])
            seen[pick.rival_center] += 1


@pytest.mark.parametrize("variant", ["default", "repo"])
def test_stages_compose_to_the_whole_method(mixture, variant):
    features, _ = mixture(1500, 6, 16, 3.0, 7)
    whole = select(features, 90, n_cores=15, seed=3, variant=variant, n_iterations=20)
    cores = select_cores(features, 15, "activeft", seed=3, n_iterations=20)
    pool = denoise(features, cores, variant=variant)
    staged = select_boundary(features, cores, pool, 90)
    assert staged.indices.tolist() == whole.indices.tolist()
    assert staged.picks == whole.picks
    assert staged.params["core_method"] == whole.params["core_method"] == "activeft"


@pytest.mark.parametrize("method", ["bilaf", *CORE_METHODS])
@pytest.mark.parametrize("variant", ["default", "repo"])
def test_same_inputs_and_seed_give_the_same_result(mixture, method, variant):
    features, _ = mixture(1200, 5, 12, 3.0, 8)
    options = {"n_iterations": 15} if method in ("bilaf", "activeft") else {}
    n_cores = {"n_cores": 12} if method == "bilaf" else {}
    first = select(features, 60, method, seed=11, variant=variant, **n_cores, **options)
    second = select(features, 60, method, seed=11, variant=variant, **n_cores, **options)
    assert first == second
    assert len(set(first.indices.tolist())) == 60


@pytest.mark.parametrize("core_method", list(CORE_METHODS))
def test_core_method_is_pluggable(mixture, core_method):
    features, _ = mixture(1000, 4, 10, 3.0, 9)
    options = {"n_iterations": 10} if core_method == "activeft" else {}
    result = select(features, 50, n_cores=10, core_method=core_method, **options)
    expected = select_cores(features, 10, core_method, seed=0, **options).indices
    assert sorted(result.core_indices.tolist()) == expected.tolist()
    assert result.params["core_method"] == core_method


def test_blocked_distances_pick_what_the_dense_path_picks(mixture, monkeypatch):
    """Clusters too large for one distance matrix are scored block by block: the same picks and
    rivals as the dense path, and its scores to float32 rounding (the blocks sum in another order)."""
    features, _ = mixture(800, 3, 8, 3.0, 10)
    dense = select(features, 80, n_cores=6, core_method="kmeans")
    monkeypatch.setattr(_geometry, "DENSE_CLUSTER_LIMIT", 16)
    monkeypatch.setattr(_geometry, "BLOCK_ELEMENTS", 4096)
    blocked = select(features, 80, n_cores=6, core_method="kmeans")
    assert blocked.indices.tolist() == dense.indices.tolist()
    scored = [(pick.boundary_score, other.boundary_score) for pick, other in zip(blocked.picks, dense.picks)]
    assert all((a is None) == (b is None) for a, b in scored)  # the cores, unscored in both
    assert [a for a, _ in scored if a is not None] == pytest.approx(
        [b for _, b in scored if b is not None], rel=1e-5, abs=1e-6
    )
    assert [pick.rival_center for pick in blocked.picks] == [pick.rival_center for pick in dense.picks]
    assert len(set(blocked.indices.tolist())) == 80
    assert set(blocked.core_indices.tolist()) <= set(blocked.indices.tolist())


def test_paper_and_code_forms_are_selectable(mixture):
    features, _ = mixture(1500, 6, 16, 3.0, 11)
    cores = select_cores(features, 12, "kmeans")
    paper = denoise(features, cores, density="paper", normalize=False, exact=True)
    code = denoise(features, cores, variant="repo")
    assert np.array_equal(paper.assignment, code.assignment)
    assert not np.array_equal(paper.kept, code.kept)
    base = select_boundary(features, cores, code, 120)
    for switch, value in (
        ("penalty_scope", "all"),
        ("intra_distance", "remaining"),
        ("budget_rule", "largest_remainder"),
    ):
        other = select_boundary(features, cores, code, 120, **{switch: value})
        assert other.params[switch] == value and len(other) == 120
        assert other.indices.tolist() != base.indices.tolist()

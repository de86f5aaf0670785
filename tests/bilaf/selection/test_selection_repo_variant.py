"""variant="repo" against a plain transcription of docs/algorithm.md §4.1-4.5, and its pinned quirks."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from bilaf.selection import _geometry, allocate_budget, denoise, select_boundary


def spec_repo_selection(
    z: np.ndarray, cores: list[int], budget: int, k: int = 10, p_in: float = 0.1, p_rm: float = 0.1, delta: float = 1.1
) -> list[int]:
    """§4 step by step, with Python loops and SciPy cdist, exactly as the spec words it."""
    q = sorted(cores)
    n_clusters = len(q)
    owner = cdist(z, z[q]).argmin(axis=1)  # §4.1: nearest centre, ties -> lowest a
    groups = [[i for i in range(len(z)) if owner[i] == a] for a in range(n_clusters)]
    denoised = []
    for a, group in enumerate(groups):  # §4.2 with the §4.3 "repo" density
        n = len(group)
        if n < 10:
            denoised.append(group)
            continue
        d = cdist(z[group], z[group])
        core = group.index(q[a])
        s = max(1, int(n * p_in))
        grown = [p for _, p in sorted((d[core][p], p) for p in range(n))[:s]]
        for _ in range(2, int(n / s) + 1):
            candidates = [p for p in range(n) if p not in grown]
            if not candidates:
                break
            scored = []
            for x in candidates:
                ranks = np.argsort(d[x][grown])[:k]
                scored.append((np.mean(d[x][ranks]), x))
            scored.sort()
            grown += [x for _, x in scored[:s]]
        denoised.append([group[p] for p in grown[: int(len(grown) * (1 - p_rm))]])
    weights = np.array([len(h) for h in denoised])  # §4.4
    weights = 1.0 * weights / weights.sum()
    shares = np.floor(weights * budget).astype(int)
    for _ in range(budget - shares.sum()):
        smallest = 0
        for i in range(n_clusters):
            if shares[i] < shares[smallest] or (shares[i] == shares[smallest] and weights[i] > weights[smallest]):
                smallest = i
        shares[smallest] += 1
    picked = []
    for a, h in enumerate(denoised):  # §4.5
        m = len(h)
        d = cdist(z[h], z[h])
        intra = [np.mean(row) for row in d]
        to_centres = cdist(z[h], z[q])
        to_centres[:, a] = 1e9 + 7
        outer, rival = to_centres.min(axis=1), to_centres.argmin(axis=1)
        factor = [1.0] * n_clusters
        core = h.index(q[a])
        picks, r, candidates = [core], int(m / shares[a]), list(range(m))
        while len(picks) < shares[a]:
            last = picks[-1]
            candidates = [i for _, i in sorted((d[last][i], i) for i in candidates)[r:]]
            if last != core:
                factor[rival[last]] *= delta
            scores = [(outer[i] * factor[rival[i]] - intra[i]) / max(outer[i], intra[i]) for i in candidates]
            picks.append(candidates[int(np.argmin(scores))])
        picked += [h[p] for p in picks]
    return picked


def _pool(n_items: int, n_clusters: int, seed: int) -> tuple[np.ndarray, list[int]]:
    """Raw (un-normalised, float64) blobs of unequal spread and size, cores drawn at random."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(n_clusters, 12)) * 3.0
    labels = rng.choice(n_clusters, size=n_items, p=rng.dirichlet(np.full(n_clusters, 2.0)))
    scales = rng.uniform(0.5, 2.0, size=n_clusters)[labels, None]
    z = means[labels] + rng.normal(size=(n_items, 12)) * scales
    return z, rng.choice(n_items, size=n_clusters, replace=False).tolist()


def _repo_run(z: np.ndarray, cores: list[int], budget: int, **idc: float) -> list[int]:
    pool = denoise(z, cores, variant="repo", **idc)
    return select_boundary(z, cores, pool, budget).indices.tolist()


@pytest.mark.parametrize(
    ("n_items", "n_clusters", "budget", "seed"),
    [
        (600, 6, 60, 0),
        (900, 12, 150, 1),
        (700, 9, 500, 2),
        (450, 5, 12, 3),
    ],
)
def test_repo_variant_matches_spec_element_by_element(n_items, n_clusters, budget, seed):
    z, cores = _pool(n_items, n_clusters, seed)
    assert _repo_run(z, cores, budget) == spec_repo_selection(z, cores, budget)


def test_repo_variant_matches_spec_with_other_hyperparameters():
    z, cores = _pool(800, 7, 4)
    expected = spec_repo_selection(z, cores, 90, k=4, p_in=0.07, p_rm=0.25, delta=1.5)
    pool = denoise(z, cores, variant="repo", n_neighbors=4, ring_fraction=0.07, removal_ratio=0.25)
    assert select_boundary(z, cores, pool, 90, penalty=1.5).indices.tolist() == expected


def test_blocked_cluster_distances_give_the_same_selection(monkeypatch):
    z, cores = _pool(600, 4, 5)
    dense = _repo_run(z, cores, 80)
    monkeypatch.setattr(_geometry, "EXACT_DENSE_LIMIT", 8)
    monkeypatch.setattr(_geometry, "BLOCK_ELEMENTS", 2048)
    assert _repo_run(z, cores, 80) == dense


def test_ring_remainder_is_dropped_in_repo_and_absorbed_by_default():
    """n = 105, s = 10: the code absorbs 100 items (5 never seen) and keeps int(100 * 0.9) = 90."""
    rng = np.random.default_rng(6)
    z = np.concatenate([rng.normal(size=(105, 8)), rng.normal(size=(40, 8)) + 12.0])
    cores = [0, 105]
    repo = denoise(z, cores, variant="repo")
    default = denoise(z, cores, normalize=False)  # same clusters, default IDC rules
    first = repo.assignment == 0
    assert np.array_equal(default.assignment, repo.assignment)
    assert first.sum() == 105
    assert (repo.absorption_rank[first] == -1).sum() == 5
    assert repo.kept[first].sum() == 90
    assert repo.clusters[0].denoised_size == 90
    assert (default.absorption_rank[first] >= 0).all()
    assert default.kept[first].sum() == 105 - 10


def test_repo_budget_rule_gives_the_remainder_to_the_smallest_share():
    # quotas 5.8 / 2.1 / 2.1: largest remainder tops up cluster 0, the code the smallest share.
    assert allocate_budget(10, [58, 21, 21], "repo").tolist() == [5, 3, 2]
    assert allocate_budget(10, [58, 21, 21]).tolist() == [6, 2, 2]
    # equal smallest shares: the larger cluster wins, and a zero share can survive
    assert allocate_budget(3, [10, 15, 75], "repo").tolist() == [0, 1, 2]
    assert allocate_budget(3, [10, 15, 75]).tolist() == [1, 1, 1]


def test_repo_budget_rule_can_exceed_a_cluster_size():
    # floors 12, 33, 33 ... leave 8 units, all going to the smallest share: 12 + 8 > 13.
    sizes = [13] + [36] * 9
    shares = allocate_budget(int(sum(sizes) * 0.93), sizes, "repo")
    assert shares[0] > sizes[0]
    capped = allocate_budget(int(sum(sizes) * 0.93), sizes)
    assert (capped <= sizes).all() and capped.sum() == int(sum(sizes) * 0.93)


def test_repo_variant_repeats_picks_when_a_share_exceeds_its_cluster():
    rng = np.random.default_rng(7)
    small = rng.normal(size=(8, 6)) * 0.5  # < 10 items: not denoised
    big = [rng.normal(size=(60, 6)) + offset for offset in (8.0, -8.0, 16.0)]
    z = np.concatenate([small, *big])
    cores = [0, 8, 68, 128]
    pool = denoise(z, cores, variant="repo")
    sizes = [stats.denoised_size for stats in pool.clusters]
    budget = next(b for b in range(len(z) // 2, sum(sizes)) if (allocate_budget(b, sizes, "repo") > sizes).any())
    result = select_boundary(z, cores, pool, budget)
    shares = allocate_budget(budget, sizes, "repo")
    assert len(result) == budget
    assert len(set(result.indices.tolist())) < budget
    assert result.indices.tolist() == spec_repo_selection(z, cores, budget)
    for cluster, (share, size) in enumerate(zip(shares, sizes)):
        picked = [p.index for p in result.picks if p.cluster == cluster]
        assert len(picked) == share
        if share > size:  # int(m / b) = 0: nothing leaves the candidate list, picks repeat
            assert len(set(picked)) < share
    default = select_boundary(z, cores, denoise(z, cores), budget)
    assert len(set(default.indices.tolist())) == budget


def test_repo_variant_refuses_a_zero_cluster_budget():
    rng = np.random.default_rng(8)
    z = np.concatenate([rng.normal(size=(200, 5)), rng.normal(size=(12, 5)) + 9, rng.normal(size=(12, 5)) - 9])
    cores = [0, 200, 212]
    pool = denoise(z, cores, variant="repo")
    with pytest.raises(ValueError, match="no budget"):
        select_boundary(z, cores, pool, 3)


def test_exact_nearest_centres_break_ties_by_lowest_centre():
    points = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, 3.0]])
    centres = np.array([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [0.0, 0.0]])
    ids, distances = _geometry.nearest_centres(points, centres, 3, exact=True)
    expected = cdist(points, centres)
    order = np.lexsort((np.broadcast_to(np.arange(4), expected.shape), expected), axis=-1)[:, :3]
    assert ids.tolist() == order.tolist()
    assert np.array_equal(distances, np.take_along_axis(expected, order, axis=1))

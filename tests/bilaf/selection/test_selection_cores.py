"""Stage 1 core methods and the distance helpers they share."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.spatial.distance import cdist

from bilaf.selection import ActiveFTParams, select, select_cores
from bilaf.selection import activeft as activeft_module
from bilaf.selection._geometry import claim_items, scatter_rows, top_matches
from bilaf.selection.activeft import OwnerTracker, _loss


def _repo_code_loss(items: torch.Tensor, anchors: torch.Tensor, tau: float = 0.07) -> torch.Tensor:
    """§3.2 as the released scripts write it: exp, max, detached anchor-anchor sums."""
    unit = F.normalize(anchors, dim=1)
    positive, owner = torch.exp(items @ unit.T / tau).max(dim=1)
    negatives = torch.exp(unit.detach() @ unit.T / tau).sum(dim=0)
    return -(torch.log(positive) - torch.log(positive + negatives[owner])).mean()


def _paper_loss(items: torch.Tensor, anchors: torch.Tensor, tau: float = 0.07) -> torch.Tensor:
    """§3.1: attraction to the owning anchor, log-sum-exp repulsion over the other anchors."""
    unit = F.normalize(anchors, dim=1)
    attraction = (items @ unit.T).max(dim=1).values.mean() / tau
    logits = unit @ unit.T / tau
    others = ~torch.eye(len(unit), dtype=torch.bool)
    repulsion = torch.stack([torch.logsumexp(logits[j][others[j]], 0) for j in range(len(unit))])
    return -attraction + repulsion.mean()


@pytest.mark.parametrize(("form", "reference"), [("code", _repo_code_loss), ("paper", _paper_loss)])
def test_activeft_loss_and_gradient_match_the_spec_formulas(form, reference):
    generator = torch.Generator().manual_seed(0)
    items = F.normalize(torch.randn(700, 16, generator=generator), dim=1)
    anchors = torch.nn.Parameter(torch.randn(9, 16, generator=generator))
    ours = _loss(items, anchors, ActiveFTParams(loss=form))
    expected = reference(items, anchors)
    (ours_grad,) = torch.autograd.grad(ours, anchors)
    (expected_grad,) = torch.autograd.grad(expected, anchors)
    assert float(ours.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    torch.testing.assert_close(ours_grad, expected_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("loss", ["code", "paper"])
def test_activeft_lowers_its_loss_and_covers_the_pool(mixture, loss):
    features, _ = mixture(2500, 10, 16, 2.0, 0)
    cores = select_cores(features, 20, "activeft", seed=1, n_iterations=150, loss=loss, learning_rate=1e-2)
    assert cores.params["final_loss"] < cores.params["initial_loss"]
    assert len(set(cores.indices.tolist())) == 20
    assert cores.indices.tolist() == sorted(cores.indices.tolist())
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    coverage = cdist(unit, unit[cores.indices]).min(axis=1).mean()
    random_coverage = np.mean(
        [cdist(unit, unit[select_cores(features, 20, "random", seed=s).indices]).min(axis=1).mean() for s in range(5)]
    )
    assert coverage < random_coverage


def test_activeft_minibatches_are_seeded(mixture):
    features, _ = mixture(3000, 5, 8, 3.0, 2)
    runs = [select_cores(features, 15, "activeft", seed=4, n_iterations=20, batch_size=500) for _ in range(2)]
    assert runs[0] == runs[1]
    assert runs[0].params["batch_size"] == 500


def test_kmeans_picks_one_item_per_well_separated_component(mixture):
    features, labels = mixture(1500, 8, 12, 12.0, 3)
    cores = select_cores(features, 8, "kmeans", seed=0, normalize=False)
    assert sorted(labels[cores.indices].tolist()) == list(range(8))


def test_kcenter_is_greedy_farthest_point(mixture):
    features, _ = mixture(800, 4, 6, 3.0, 4)
    order = select(features, 25, "kcenter", seed=5, variant="repo").indices  # raw features
    distances = cdist(features, features)
    for step in range(1, len(order)):
        nearest_pick = distances[:, order[:step]].min(axis=1)
        assert nearest_pick[order[step]] == pytest.approx(nearest_pick.max(), rel=1e-4)


def test_random_is_seeded_and_distinct(mixture):
    features, _ = mixture(500, 2, 4, 1.0, 5)
    first, again, other = (select_cores(features, 40, "random", seed=s) for s in (1, 1, 2))
    assert first == again and first != other
    assert len(set(first.indices.tolist())) == 40


def test_baselines_report_their_name_as_role(mixture):
    features, _ = mixture(600, 3, 8, 3.0, 6)
    for method in ("random", "kmeans", "kcenter", "activeft"):
        result = select(features, 30, method, **({"n_iterations": 5} if method == "activeft" else {}))
        assert {p.role for p in result.picks} == {method}
        assert result.clusters == () and len(set(result.indices.tolist())) == 30


def test_claim_items_gives_identical_queries_distinct_items():
    items = torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [6.0, 0.0]])
    queries = torch.tensor([[0.2, 0.0], [0.2, 0.0], [0.2, 0.0]])
    assert claim_items(queries, items, "euclidean").tolist() == [0, 1, 2]
    # a one-item shortlist is exhausted for the later queries: full-ranking fallback
    assert claim_items(queries, items, "euclidean", shortlist=1).tolist() == [0, 1, 2]


def test_scatter_rows_sums_rows_per_group():
    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(10_000, 7, generator=generator, dtype=torch.float64)
    weights = torch.randn(10_000, generator=generator, dtype=torch.float64)
    owner = torch.randint(0, 5, (10_000,), generator=generator)
    expected = torch.stack([(rows[owner == g] * weights[owner == g, None]).sum(0) for g in range(5)])
    torch.testing.assert_close(scatter_rows(owner, rows, weights, 5), expected)


def _spec_map_back(anchors: np.ndarray, items: np.ndarray) -> list[int]:
    """§3.4: in anchor order, the highest-ranked item by similarity that is not yet taken."""
    taken: list[int] = []
    for anchor in anchors:
        ranking = np.argsort(-(items @ anchor), kind="stable")
        taken.append(int(next(i for i in ranking if i not in taken)))
    return taken


def test_claim_items_matches_the_spec_map_back(mixture):
    items, _ = mixture(3000, 3, 8, 1.0, 7)
    items = items / np.linalg.norm(items, axis=1, keepdims=True)
    rng = np.random.default_rng(0)
    anchors = items[rng.choice(3000, 40, replace=False)] + rng.normal(size=(40, 8)) * 0.05
    anchors[20:] = anchors[:20]  # repeated anchors exhaust short shortlists
    expected = _spec_map_back(anchors, items)
    for shortlist in (2, 64):
        claimed = claim_items(torch.from_numpy(anchors).float(), torch.from_numpy(items), "dot", shortlist=shortlist)
        assert claimed.tolist() == expected


def test_top_matches_equals_a_full_sort(mixture):
    points, _ = mixture(500, 4, 6, 2.0, 8)
    keys = points[:60].copy()
    keys[30] = keys[10]  # an exact tie: the lower id comes first
    ids, scores = top_matches(torch.from_numpy(points), torch.from_numpy(keys), 5, "euclidean")
    distances = cdist(points, keys, "sqeuclidean")
    for row in range(len(points)):
        assert ids[row].tolist() == np.lexsort((np.arange(60), distances[row]))[:5].tolist()
    owners, _ = top_matches(torch.from_numpy(points), torch.from_numpy(keys), 1, "dot")
    assert owners[:, 0].tolist() == np.argmax(points @ keys.T, axis=1).tolist()


@pytest.mark.parametrize("subset", [False, True])
def test_owner_tracker_finds_the_full_search_owners_along_a_trajectory(subset):
    """The bounded owner search gives the full search's owners and similarities at every step,
    ties to the lower anchor id included (duplicated items and a duplicated anchor make ties)."""
    generator = torch.Generator().manual_seed(3)
    items = F.normalize(torch.randn(3000, 24, generator=generator), dim=1)
    items[1500:1600] = items[:100]
    anchors = torch.nn.Parameter(items[torch.randperm(3000, generator=generator)[:40]].clone())
    with torch.no_grad():
        anchors[7] = anchors[3]
    optimizer = torch.optim.Adam([anchors], lr=2e-2)
    tracker = OwnerTracker(len(items), len(anchors), items.device)
    rng = np.random.default_rng(0)
    for _ in range(60):
        rows = torch.as_tensor(np.sort(rng.choice(3000, 1200, replace=False))) if subset else None
        batch = items if rows is None else items[rows]
        unit = F.normalize(anchors, dim=1)
        expected_owner, expected_similarity = top_matches(batch, unit.detach(), 1, "dot")
        similarity, owner = tracker.owners(batch, rows, unit.detach())
        assert torch.equal(owner, expected_owner[:, 0])
        torch.testing.assert_close(similarity, expected_similarity[:, 0], rtol=0, atol=1e-5)
        loss = -(batch @ unit.T).max(dim=1).values.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_activeft_with_and_without_owner_bounds_agree(mixture, monkeypatch):
    """The bounded search changes the arithmetic, not the optimisation: same loss curve ends, and
    picks that agree within float rounding (here exactly)."""
    features, _ = mixture(2000, 8, 16, 2.0, 0)
    bounded = select_cores(features, 16, "activeft", seed=2, n_iterations=100, learning_rate=1e-2)
    monkeypatch.setattr(activeft_module, "BOUND_ENTRY_LIMIT", 0)
    full = select_cores(features, 16, "activeft", seed=2, n_iterations=100, learning_rate=1e-2)
    assert bounded.params["final_loss"] == pytest.approx(full.params["final_loss"], rel=1e-4)
    assert bounded.indices.tolist() == full.indices.tolist()

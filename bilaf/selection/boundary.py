"""Stage 2b: budget split (docs/algorithm.md §4.4) and iterative boundary picks with penalty (§4.5)."""

from __future__ import annotations

import heapq
import numbers
from typing import Any

import numpy as np

from bilaf import defaults
from bilaf.compute import Compute, LocalCompute, Task
from bilaf.errors import InvalidInputError
from bilaf.progress import Counted, Progress

from ._geometry import ClusterDistances, rows_per_block, stage2_points
from ._validation import validate_core_indices, validate_source
from .denoise import nearest_cores
from .results import BOUNDARY_ROLE, CORE_ROLE, ClusterStats, CoreSelection, DenoisedPool, Pick, SelectionResult
from .shards import FeatureRows, as_source
from .variants import BUDGET_RULES, Stage2Settings, resolve_settings

BILAF = "bilaf"
_TINY = np.finfo(np.float64).tiny  # guards 0 / 0 for float32 near-duplicates only


def allocate_budget(budget: int, sizes: Any, rule: str = "largest_remainder") -> np.ndarray:
    """Split ``budget`` over clusters of the given denoised sizes (each share counts its core).

    "largest_remainder": proportional shares, floored, every share in [1, size], the units left
    (or in excess) handed out by largest (smallest) remainder, ties to the lower cluster id.
    "repo": the official rule, floor then one unit at a time to the smallest share (ties: larger
    size, then lower id); shares may exceed sizes or be 0.
    """
    if rule not in BUDGET_RULES:
        raise InvalidInputError(f"budget_rule must be one of {BUDGET_RULES}; got {rule!r}")
    sizes = np.asarray(sizes, dtype=np.int64)
    if sizes.ndim != 1 or sizes.size == 0 or (sizes < 1).any():
        raise InvalidInputError(f"cluster sizes must be a non-empty list of positive counts; got {sizes}")
    if rule == "repo":
        return _repo_allocation(budget, sizes)
    if not len(sizes) <= budget <= sizes.sum():
        raise InvalidInputError(
            f"budget {budget} must lie between the number of clusters ({len(sizes)}) "
            f"and the denoised pool size ({sizes.sum()})"
        )
    return apportion(budget, sizes, lower=np.ones_like(sizes), upper=sizes)


def apportion(total: int, weights: Any, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Integer shares of ``total`` proportional to ``weights``, each in [lower, upper]: floored
    quotas, then the units left (or in excess) by largest (smallest) remainder, ties to the lower
    position. The caller guarantees sum(lower) <= total <= sum(upper) and some positive weight."""
    weights = np.asarray(weights, dtype=np.float64)
    quotas = total * weights / weights.sum()
    shares = np.clip(np.floor(quotas).astype(np.int64), lower, upper)
    while (missing := total - int(shares.sum())) != 0:
        movable = np.flatnonzero(shares < upper) if missing > 0 else np.flatnonzero(shares > lower)
        gap = quotas[movable] - shares[movable]
        priority = gap if missing > 0 else -gap
        chosen = movable[np.lexsort((movable, -priority))][: abs(missing)]
        shares[chosen] += 1 if missing > 0 else -1
    return shares


def _repo_allocation(budget: int, sizes: np.ndarray) -> np.ndarray:
    proportions = 1.0 * sizes / sizes.sum()
    shares = np.floor(proportions * budget).astype(np.int64)
    heap = [(int(share), -float(p), i) for i, (share, p) in enumerate(zip(shares, proportions))]
    heapq.heapify(heap)
    for _ in range(budget - int(shares.sum())):
        share, negative_proportion, cluster = heapq.heappop(heap)
        shares[cluster] += 1
        heapq.heappush(heap, (share + 1, negative_proportion, cluster))
    return shares


def select_boundary(
    features: Any,
    cores: Any,
    denoised: DenoisedPool,
    budget: int,
    penalty: float = defaults.PENALTY,
    *,
    variant: str | None = None,
    budget_rule: str | None = None,
    penalty_scope: str | None = None,
    intra_distance: str | None = None,
    compute: Compute | None = None,
) -> SelectionResult:
    """Pick ``budget`` items: each cluster's core, then its boundary items one at a time.

    ``penalty`` is the opponent penalty delta (1.0 disables it). ``variant`` defaults to the one
    ``denoised`` was made with; geometry (normalisation, precision) always follows ``denoised``.
    ``features`` may be a ``FeatureRows``; ``compute`` runs the pool's shards (rival cores) and one
    task per cluster (its picks) where it says, with the same result everywhere.
    """
    settings = resolve_settings(
        variant or denoised.variant,
        normalize=denoised.normalized,
        exact=denoised.params["exact"],
        density=denoised.params["density"],
        absorb_remainder=denoised.params["absorb_remainder"],
        budget_rule=budget_rule,
        penalty_scope=penalty_scope,
        intra_distance=intra_distance,
    )
    source = validate_source(features, compute, budget=budget, cores=cores, normalize=settings.normalize)
    core_ids = validate_core_indices(cores, len(source))
    if len(source) != denoised.n_items or not np.array_equal(core_ids, denoised.cores):
        raise InvalidInputError(
            "denoised pool does not match these features and cores: it covers "
            f"{denoised.n_items} items and {len(denoised.cores)} cores, got "
            f"{len(source)} items and {len(core_ids)} cores"
        )
    result = select_boundary_validated(
        source, denoised, int(budget), penalty, settings, variant or denoised.variant, compute
    )
    if isinstance(cores, CoreSelection):
        result.params.update(core_method=cores.method, core_seed=cores.seed, core_params=cores.params)
    return result


def select_boundary_validated(
    features: FeatureRows | np.ndarray,
    denoised: DenoisedPool,
    budget: int,
    penalty: float,
    settings: Stage2Settings,
    variant: str,
    compute: Compute | None = None,
) -> SelectionResult:
    """``select_boundary`` on already validated inputs (used by the whole-method pipeline)."""
    source = as_source(features)
    compute = compute or LocalCompute()
    core_ids = denoised.cores
    check_boundary_args(len(core_ids), penalty)
    members = _denoised_members(denoised)
    shares = allocate_budget(budget, [len(h) for h in members], settings.budget_rule)
    if (shares == 0).any():
        raise InvalidInputError(
            f"the repo budget rule gives cluster {int(np.argmin(shares))} no budget "
            "(the official code divides by zero here); raise the budget to at "
            "least twice the number of cores or use budget_rule='largest_remainder'"
        )
    n_rivals = 1 if settings.penalty_scope == "nearest" else int(min(len(core_ids) - 1, max(1, shares.max() - 1)))
    kept = np.concatenate(members)
    rival_ids, rival_distances = _rivals(source, kept, denoised.assignment[kept], core_ids, n_rivals, settings, compute)
    starts = np.concatenate([[0], np.cumsum([len(items) for items in members])])
    tasks = [
        Task(
            name=f"boundary-cluster-{cluster}",
            function=_boundary_task,
            args=(
                source.subset(items),
                int(np.flatnonzero(items == core_ids[cluster])[0]),
                int(shares[cluster]),
                rival_ids[starts[cluster] : starts[cluster + 1]],
                rival_distances[starts[cluster] : starts[cluster + 1]],
                len(core_ids),
                float(penalty),
                settings,
            ),
            memory_bytes=(len(items) * source.n_columns + len(items) ** 2) * (8 if settings.exact else 4),
            place=cluster,
        )
        for cluster, items in enumerate(members)
    ]
    chosen_of: list[Any] = [None] * len(tasks)
    for cluster, chosen in Progress(Counted(compute.as_completed(tasks), len(tasks)), "boundary picks"):
        chosen_of[cluster] = chosen
    picks: list[Pick] = []
    stats = []
    for cluster, (items, chosen) in enumerate(zip(members, chosen_of)):
        for position, score, rival, factor in chosen:
            is_core = score is None
            picks.append(
                Pick(
                    rank=len(picks),
                    index=int(items[position]),
                    role=CORE_ROLE if is_core else BOUNDARY_ROLE,
                    cluster=cluster,
                    boundary_score=None if is_core else float(score),
                    rival_center=None if is_core else int(core_ids[rival]),
                    penalty_factor=None if is_core else float(factor),
                )
            )
        size = denoised.clusters[cluster].size
        stats.append(
            ClusterStats(
                cluster=cluster,
                core_index=int(core_ids[cluster]),
                size=size,
                denoised_size=len(items),
                budget=int(shares[cluster]),
            )
        )
    params = {
        "budget": budget,
        "penalty": float(penalty),
        "n_cores": len(core_ids),
        **denoised.params,
        **settings.to_dict(),
    }
    return SelectionResult(
        indices=[pick.index for pick in picks],
        picks=tuple(picks),
        clusters=tuple(stats),
        method=BILAF,
        variant=variant,
        params=params,
    )


def _boundary_task(
    items: FeatureRows,
    core_position: int,
    n_picks: int,
    rival_ids: np.ndarray,
    rival_distances: np.ndarray,
    n_clusters: int,
    penalty: float,
    settings: Stage2Settings,
) -> list[tuple[int, float | None, int | None, float | None]]:
    """One cluster's picks, where a task runs (positions in the cluster's absorption order)."""
    points = stage2_points(items.read(), settings.normalize, settings.exact)
    return _pick_cluster(
        ClusterDistances(points, settings.exact),
        core_position,
        n_picks,
        rival_ids,
        rival_distances,
        n_clusters,
        penalty,
        settings,
    )


def check_boundary_args(n_cores: int, penalty: Any) -> None:
    """ValueError unless there are 2+ cores (a boundary needs a rival) and 1 <= penalty < inf."""
    if n_cores < 2:
        raise InvalidInputError("BiLAF needs at least 2 cores: a boundary score needs a rival centre")
    if isinstance(penalty, bool) or not isinstance(penalty, numbers.Real) or not 1.0 <= penalty < np.inf:
        raise InvalidInputError(f"penalty must be a finite number >= 1 (1 disables it); got {penalty!r}")


def _denoised_members(denoised: DenoisedPool) -> list[np.ndarray]:
    """Each cluster's denoised items H in absorption order, grouped by cluster."""
    items = np.flatnonzero(denoised.kept)
    order = np.lexsort((denoised.absorption_rank[items], denoised.assignment[items]))
    items = items[order]
    counts = np.bincount(denoised.assignment[items], minlength=len(denoised.cores))
    members = np.split(items, np.cumsum(counts)[:-1])
    for cluster, cluster_items in enumerate(members):
        if denoised.cores[cluster] not in cluster_items:
            raise InvalidInputError(
                f"denoised pool is inconsistent: core {denoised.cores[cluster]} is "
                f"not among the kept items of its cluster {cluster}"
            )
    return members


def _rivals(
    source: FeatureRows,
    items: np.ndarray,
    own: np.ndarray,
    core_ids: np.ndarray,
    n_rivals: int,
    settings: Stage2Settings,
    compute: Compute,
) -> tuple[np.ndarray, np.ndarray]:
    """For each item, its ``n_rivals`` nearest cores other than its own cluster's, nearest first."""
    ids, distances = nearest_cores(source, core_ids, n_rivals + 1, settings, compute, rows=items)
    not_own = np.argsort(ids == own[:, None], axis=1, kind="stable")[:, :n_rivals]
    return np.take_along_axis(ids, not_own, axis=1), np.take_along_axis(distances, not_own, axis=1)


def _pick_cluster(
    distances: ClusterDistances,
    core_position: int,
    n_picks: int,
    rival_ids: np.ndarray,
    rival_distances: np.ndarray,
    n_clusters: int,
    penalty: float,
    settings: Stage2Settings,
) -> list[tuple[int, float | None, int | None, float | None]]:
    """Iterative select-and-remove inside one denoised cluster (positions in H order).

    Returns (position, penalised boundary score, rival cluster, rival's penalty factor) per pick;
    the first is the core with None for the rest. After each pick the ``int(m / n_picks)``
    candidates nearest to it (itself included) leave the candidate list; a pick increments the
    penalty of its rival by the factor ``penalty`` (kept by repeated multiplication, like the code).
    """
    m = distances.n
    n_removed = int(m / n_picks)
    factors = np.ones(n_clusters, dtype=np.float64)
    candidates = np.arange(m)
    outer = rival_distances[:, 0]
    intra_sums = _row_sums(distances)
    remaining = settings.intra_distance == "remaining"
    picks: list[tuple[int, float | None, int | None, float | None]] = [(core_position, None, None, None)]
    last, last_rival = core_position, None
    while len(picks) < n_picks:
        to_last = distances.block(np.array([last]), candidates)[0]
        order = np.lexsort((candidates, to_last))
        removed, candidates = candidates[order[:n_removed]], candidates[order[n_removed:]]
        if last_rival is not None:
            factors[last_rival] *= penalty
        if remaining:
            intra_sums[candidates] -= _sums_to(distances, candidates, removed)
            inner = intra_sums[candidates] / len(candidates)
        else:
            inner = intra_sums[candidates] / m
        if settings.penalty_scope == "nearest":
            rival = rival_ids[candidates, 0]
            penalised = outer[candidates] * factors[rival]
        else:
            scaled = rival_distances[candidates] * factors[rival_ids[candidates]]
            closest = scaled.argmin(axis=1)
            rival = rival_ids[candidates, closest]
            penalised = scaled[np.arange(len(candidates)), closest]
        scores = (penalised - inner) / np.maximum(np.maximum(outer[candidates], inner), _TINY)
        best = int(np.argmin(scores))  # first minimum in the current candidate order
        last = int(candidates[best])
        last_rival = int(rival[best]) if last != core_position else None
        picks.append((last, scores[best], int(rival[best]), factors[rival[best]]))
    return picks


def _row_sums(distances: ClusterDistances) -> np.ndarray:
    everything = np.arange(distances.n)
    step = rows_per_block(distances.n)
    return np.concatenate(
        [distances.block(everything[s : s + step], everything).sum(axis=1) for s in range(0, distances.n, step)]
    ).astype(np.float64)


def _sums_to(distances: ClusterDistances, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    if len(columns) == 0:
        return np.zeros(len(rows))
    step = rows_per_block(len(columns))
    return np.concatenate([distances.block(rows[s : s + step], columns).sum(axis=1) for s in range(0, len(rows), step)])

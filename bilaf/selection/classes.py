"""Label-aware boundary selection for the rounds after the first (docs/rounds.md, "Boundaries between
real classes").

One-shot BiLAF draws its boundaries between pseudo-classes (clusters around cores); on weak
features those do not follow the classes. Once annotators have returned labels, the classes
themselves take that place:

1. every unlabeled item gets a class from a class-balanced linear probe on the labeled features;
2. IDC denoising per class region, grown outward from the class's labeled items
   (``denoise.grow_from_seeds``): the last absorbed are dropped as noise;
3. the boundary score of a candidate against each rival class, with a class's "centre" replaced
   by its labeled items: d_in = mean distance to the k nearest labeled items of its own class,
   d_out(c') = the same for rival class c'. BS = (min over c' of delta^t_c' d_out(c') - d_in)
   / max(nearest d_out, d_in), smaller = closer to a real class border;
4. per class, iterative select-and-remove with the opponent penalty per rival class, as BiLAF;
5. the budget is split across classes to top them up towards their share of the pool (below).

The round may also spend ``n_cores`` of its budget on coverage: cores picked by the core method
with every labeled and pending item as a fixed anchor (new data unlike the old attracts them).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from bilaf import defaults
from bilaf.errors import InvalidInputError
from bilaf.progress import Progress

from ._geometry import ClusterDistances, device, l2_normalize, rows_per_block, squared_distances
from ._validation import KnownItems, validate_inputs, validate_known
from .boundary import _TINY, apportion, check_boundary_args
from .denoise import IdcParams, grow_from_seeds
from .probe import INVERSE_REGULARIZATION, class_probabilities
from .results import BOUNDARY_ROLE, CORE_ROLE, ClassRegions, ClassStats, Pick, SelectionResult
from .strategy import MIN_LABELED_CLASSES, is_label_aware

LABEL_AWARE = "bilaf-labels"


def class_regions(
    features: Any,
    labels: Any,
    *,
    pending: Any = None,
    cores: Any = None,
    n_neighbors: int = defaults.N_NEIGHBORS,
    ring_fraction: float = defaults.RING_FRACTION,
    removal_ratio: float = defaults.REMOVAL_RATIO,
    min_cluster_size: int = defaults.MIN_CLUSTER_SIZE,
) -> ClassRegions:
    """Give every item a class (its label, else the probe's) and denoise each class region.

    ``labels``: one class index per item, -1 = unlabeled (two classes at least); ``pending``:
    items sent to annotators and not labeled yet; ``cores``: this round's coverage picks.
    """
    matrix = validate_inputs(features, normalize=True)
    known = validate_known(labels, pending, len(matrix))
    params = IdcParams(n_neighbors, ring_fraction, removal_ratio, min_cluster_size)
    return class_regions_validated(matrix, known, _check_cores(cores, known), params)


def _check_cores(cores: Any, known: KnownItems) -> np.ndarray:
    array = np.asarray([] if cores is None else getattr(cores, "indices", cores), dtype=np.int64)
    if array.size and (array.min() < 0 or array.max() >= len(known.taken)):
        raise InvalidInputError(f"cores must be item indices in [0, {len(known.taken)})")
    if array.size and known.taken[array].any():
        raise InvalidInputError(f"core {array[known.taken[array]][0]} is labeled or pending already")
    return np.sort(array)


def class_regions_validated(
    matrix: np.ndarray, known: KnownItems, cores: np.ndarray, params: IdcParams
) -> ClassRegions:
    """``class_regions`` on validated inputs (used by the whole-method pipeline)."""
    if not is_label_aware(known):
        raise InvalidInputError(
            f"label-aware selection needs labels of at least {MIN_LABELED_CLASSES} classes; got "
            f"{len(known.classes)} ({len(known.labeled)} labeled items)"
        )
    points = l2_normalize(matrix)
    unlabeled = np.flatnonzero(known.labels < 0)
    # Class-balanced: after a few rounds the labels' class mix reflects what was picked, and an
    # unweighted probe would hand the largest labeled class a region larger than its share.
    classes, probabilities = class_probabilities(
        matrix, known.labeled, known.labels[known.labeled], unlabeled, balanced=True
    )
    assignment = known.labels.copy()
    assignment[unlabeled] = classes[probabilities.argmax(axis=1)]
    kept = np.zeros(len(matrix), dtype=bool)
    absorption_rank = np.full(len(matrix), -1, dtype=np.int64)
    stats = []
    for class_id in Progress(known.classes, "class regions"):
        members = np.flatnonzero(assignment == class_id)
        seeds = np.flatnonzero(known.labels[members] == class_id)
        if len(members) < params.min_cluster_size:
            order, n_kept = np.concatenate([seeds, np.setdiff1d(np.arange(len(members)), seeds)]), len(members)
        else:
            order, n_kept = grow_from_seeds(ClusterDistances(points[members], exact=False), seeds, params)
        absorption_rank[members[order]] = np.arange(len(order))
        kept[members[order[:n_kept]]] = True
        stats.append(
            ClassStats(class_id=int(class_id), size=len(members), denoised_size=int(n_kept), labeled=len(seeds))
        )
    return ClassRegions(
        labels=known.labels,
        pending=known.pending,
        cores=cores,
        assignment=assignment,
        kept=kept,
        absorption_rank=absorption_rank,
        params={**vars(params), "probe_C": INVERSE_REGULARIZATION, "probe_class_weight": "balanced"},
        classes=tuple(stats),
    )


def select_class_boundary(
    features: Any, regions: ClassRegions, budget: int, penalty: float = defaults.PENALTY
) -> SelectionResult:
    """The round's picks: its cores first, then ``budget - len(cores)`` boundary picks between
    the classes of ``regions`` (see the module docstring)."""
    matrix = validate_inputs(features, budget=budget, normalize=True)
    if len(matrix) != regions.n_items:
        raise InvalidInputError(f"class regions cover {regions.n_items} items, the features {len(matrix)}")
    check_boundary_args(2, penalty)
    return select_class_boundary_validated(matrix, regions, int(budget), float(penalty))


def select_class_boundary_validated(
    matrix: np.ndarray, regions: ClassRegions, budget: int, penalty: float
) -> SelectionResult:
    """``select_class_boundary`` on validated inputs."""
    n_boundary = budget - len(regions.cores)
    if n_boundary < 0:
        raise InvalidInputError(f"budget {budget} is smaller than the round's {len(regions.cores)} cores")
    classes = np.array([stats.class_id for stats in regions.classes], dtype=np.int64)
    free = ~regions.taken
    candidates = [np.flatnonzero((regions.assignment == c) & regions.kept & free) for c in classes]
    capacity = np.array([len(items) for items in candidates])
    if n_boundary > capacity.sum():
        raise InvalidInputError(
            f"{n_boundary} boundary picks asked for, but only {capacity.sum()} denoised "
            "items are neither labeled, pending nor cores"
        )
    shares = _class_shares(regions, classes, capacity, n_boundary)
    points = l2_normalize(matrix)
    labeled = np.flatnonzero(regions.labels >= 0)
    rows = np.concatenate(candidates)
    to_class = _distance_to_classes(
        points, rows, labeled, regions.labels[labeled], classes, int(regions.params["n_neighbors"])
    )
    picks = [Pick(rank=rank, index=int(item), role=CORE_ROLE) for rank, item in enumerate(regions.cores)]
    offset = 0
    for position, (items, share) in enumerate(zip(Progress(candidates, "class boundary picks"), shares)):
        block = to_class[offset : offset + len(items)]
        offset += len(items)
        if share == 0:
            continue
        rival_positions = np.delete(np.arange(len(classes)), position)
        chosen = _pick_in_class(
            ClusterDistances(points[items], exact=False),
            int(share),
            block[:, position],
            block[:, rival_positions],
            rival_positions,
            len(classes),
            penalty,
        )
        for local, score, rival, factor in chosen:
            picks.append(
                Pick(
                    rank=len(picks),
                    index=int(items[local]),
                    role=BOUNDARY_ROLE,
                    boundary_score=score,
                    penalty_factor=factor,
                    predicted_class=int(classes[position]),
                    rival_class=int(classes[rival]),
                )
            )
    class_stats = tuple(
        ClassStats(
            class_id=s.class_id, size=s.size, denoised_size=s.denoised_size, labeled=s.labeled, budget=int(share)
        )
        for s, share in zip(regions.classes, shares)
    )
    params = {
        "budget": budget,
        "penalty": penalty,
        "n_cores": len(regions.cores),
        "labeled": len(labeled),
        "pending": len(regions.pending),
        **regions.params,
    }
    return SelectionResult(
        indices=[pick.index for pick in picks],
        picks=tuple(picks),
        clusters=(),
        classes=class_stats,
        method=LABEL_AWARE,
        variant="default",
        params=params,
    )


def _class_shares(regions: ClassRegions, classes: np.ndarray, capacity: np.ndarray, n_boundary: int) -> np.ndarray:
    """Boundary picks per class, topping each class up towards its share of the pool.

    A class's share is its denoised region's share of all denoised items (the probe's estimate of
    the class prior). Counting what each class already has (labeled, pending and this round's
    cores, by assigned class), the picks go to the classes furthest below share x (what there
    will be after this round), so classes that earlier rounds under-served catch up; when none is
    below its share, plainly in proportion to the shares. Each class gets at most its candidates.
    """
    if n_boundary == 0:
        return np.zeros(len(classes), dtype=np.int64)
    share = np.array([stats.denoised_size for stats in regions.classes], dtype=np.float64)
    share /= share.sum()
    taken = regions.taken
    have = np.array([np.count_nonzero(taken & (regions.assignment == c)) for c in classes], dtype=np.float64)
    need = np.clip((have.sum() + n_boundary) * share - have, 0.0, None)
    weights = np.where(capacity > 0, need if need.sum() > 0 else share, 0.0)
    if weights.sum() == 0:
        weights = (capacity > 0).astype(np.float64)
    return apportion(n_boundary, weights, lower=np.zeros(len(classes), dtype=np.int64), upper=capacity)


def _distance_to_classes(
    points: np.ndarray, rows: np.ndarray, labeled: np.ndarray, labels: np.ndarray, classes: np.ndarray, k: int
) -> np.ndarray:
    """Mean distance of each ``points[rows]`` item to its ``k`` nearest labeled items of each class
    (all of them when a class has fewer): one column per class, in ``classes`` order."""
    dev = device()
    by_class = [labeled[labels == c] for c in classes]
    references = torch.as_tensor(points[np.concatenate(by_class)], device=dev)
    reference_sq = (references * references).sum(1)
    bounds = np.cumsum([0] + [len(items) for items in by_class])
    out = np.empty((len(rows), len(classes)), dtype=np.float64)
    step = rows_per_block(len(references))
    for start in range(0, len(rows), step):
        block = torch.as_tensor(points[rows[start : start + step]], device=dev)
        distances = squared_distances(block, (block * block).sum(1), references, reference_sq).sqrt_()
        for column, (low, high) in enumerate(zip(bounds[:-1], bounds[1:])):
            nearest = torch.topk(distances[:, low:high], min(k, high - low), dim=1, largest=False).values
            out[start : start + len(block), column] = nearest.mean(dim=1).double().cpu().numpy()
    return out


def _pick_in_class(
    distances: ClusterDistances,
    n_picks: int,
    inner: np.ndarray,
    rivals: np.ndarray,
    rival_ids: np.ndarray,
    n_classes: int,
    penalty: float,
) -> list[tuple[int, float, int, float]]:
    """Iterative select-and-remove among one class's candidates (positions in ``distances``).

    Each pick is the candidate of smallest penalised boundary score; it and its
    ``int(m / n_picks) - 1`` nearest remaining candidates then leave the list, and its rival
    class's penalty is multiplied by ``penalty``. Returns (position, score, rival class position,
    rival's penalty factor at pick time) per pick.
    """
    n_removed = int(distances.n / n_picks)
    factors = np.ones(n_classes, dtype=np.float64)
    candidates = np.arange(distances.n)
    outer = rivals.min(axis=1)
    picks: list[tuple[int, float, int, float]] = []
    while len(picks) < n_picks:
        scaled = rivals[candidates] * factors[rival_ids][None, :]
        closest = scaled.argmin(axis=1)
        penalised = scaled[np.arange(len(candidates)), closest]
        scores = (penalised - inner[candidates]) / np.maximum(np.maximum(outer[candidates], inner[candidates]), _TINY)
        best = int(np.argmin(scores))  # first minimum in the current candidate order
        chosen, rival = int(candidates[best]), int(rival_ids[closest[best]])
        picks.append((chosen, float(scores[best]), rival, float(factors[rival])))
        factors[rival] *= penalty
        to_chosen = distances.block(np.array([chosen]), candidates)[0]
        candidates = candidates[np.lexsort((candidates, to_chosen))[n_removed:]]
    return picks

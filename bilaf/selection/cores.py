"""Stage 1: core selection: ActiveFT, k-means, k-center greedy (FDS), random (docs/algorithm.md §3, §5).

Each core method returns items in its own pick order; ``select_cores`` sorts them ascending into a
CoreSelection, as the released core JSONs are.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from bilaf.compute import Compute
from bilaf.errors import InvalidInputError
from bilaf.progress import Progress

from ._geometry import claim_items, device, l2_normalize, nearest_centres, scatter_rows, top_matches
from ._validation import KnownItems, validate_known, validate_source
from .activeft import ActiveFTParams, activeft
from .results import CoreSelection
from .shards import FeatureRows


@dataclass(frozen=True)
class KMeansParams:
    """Lloyd iterations after k-means++ seeding on a random sample of ``max(3k, 10000)`` items."""

    max_iter: int = 100
    tol: float = 1e-4

    def __post_init__(self) -> None:
        if isinstance(self.max_iter, bool) or not isinstance(self.max_iter, numbers.Integral) or self.max_iter < 1:
            raise InvalidInputError(f"max_iter must be a positive integer; got {self.max_iter!r}")
        if isinstance(self.tol, bool) or not isinstance(self.tol, numbers.Real) or self.tol < 0:
            raise InvalidInputError(f"tol must be a number >= 0; got {self.tol!r}")


@dataclass(frozen=True)
class NoParams:
    """Methods without options."""


_KMEANS_INIT_MIN = 10_000


def select_cores(
    features: Any,
    n_cores: int,
    method: str = "activeft",
    seed: int = 0,
    *,
    normalize: bool = True,
    labels: Any = None,
    pending: Any = None,
    compute: Compute | None = None,
    **options: Any,
) -> CoreSelection:
    """Pick ``n_cores`` distinct items as pseudo-class centres; indices come back ascending.

    ``features``: an array, or a ``FeatureRows`` (rows of a ``.npy`` file) that ``compute`` reads
    shard by shard where its tasks run (ActiveFT runs there; the other methods in this process).
    ``normalize`` (k-means, k-center) measures on unit vectors; ActiveFT always does (cosine).
    ``labels`` (-1 = unlabeled) and ``pending`` (item indices) are what earlier rounds left: those
    items are never picked and serve as fixed anchors (see ``core_pick_order``).
    ``options`` go to the method: ActiveFT ``ActiveFTParams`` fields, k-means ``KMeansParams``.
    """
    params = method_params(method, options)
    check_seed(seed)
    source = validate_source(features, compute, n_cores=n_cores, normalize=uses_unit_vectors(method, normalize))
    known = validate_known(labels, pending, len(source), budget=n_cores)
    order, info = core_pick_order(source, int(n_cores), method, seed, normalize, params, known, compute)
    return CoreSelection(indices=np.sort(order), method=method, seed=seed, params=info)


def method_params(method: str, options: dict[str, Any]) -> Any:
    """The method's parameter object; ValueError on an unknown method or option."""
    if method not in CORE_METHODS:
        raise InvalidInputError(f"core method must be one of {tuple(CORE_METHODS)}; got {method!r}")
    params_type = CORE_METHODS[method][1]
    allowed = tuple(params_type.__dataclass_fields__)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise InvalidInputError(f"unknown option {unknown[0]!r} for method {method!r}; allowed: {allowed or 'none'}")
    return params_type(**options)


def uses_unit_vectors(method: str, normalize: bool) -> bool:
    """Whether the core method L2-normalises the features (so zero rows are invalid)."""
    return method == "activeft" or (normalize and method != "random")


def check_seed(seed: Any) -> None:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise InvalidInputError(f"seed must be a non-negative integer; got {seed!r}")


def core_pick_order(
    source: FeatureRows,
    n_cores: int,
    method: str,
    seed: int,
    normalize: bool,
    params: Any,
    known: KnownItems | None = None,
    compute: Compute | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Validated inputs in, (items in pick order, JSON-safe parameters and diagnostics) out.

    With ``known`` items (labeled or pending), every method continues from them: ActiveFT keeps
    them as fixed anchors, k-center's greedy starts from them, k-means keeps them as fixed centres,
    random draws from the rest; none of them is ever picked.
    """
    taken = None if known is None or not known.taken.any() else known.taken
    if method == "activeft":
        order, info = activeft(source, n_cores, seed, params, taken, compute)
        return order, {**asdict(params), **info, "normalize": True}  # always cosine geometry
    order, info = CORE_METHODS[method][0](source.materialize(), n_cores, seed, normalize, params, taken)
    return order, {**asdict(params), **info}


def _points(matrix: np.ndarray, normalize: bool) -> np.ndarray:
    return l2_normalize(matrix) if normalize else np.ascontiguousarray(matrix, dtype=np.float32)


def _random(
    matrix: np.ndarray, n_cores: int, seed: int, normalize: bool, params: NoParams, taken: np.ndarray | None
) -> tuple[np.ndarray, dict[str, Any]]:
    rng = np.random.default_rng(seed)
    if taken is None:
        return rng.choice(len(matrix), n_cores, replace=False), {}
    free = np.flatnonzero(~taken)
    return free[rng.choice(len(free), n_cores, replace=False)], {}


def _kcenter(
    matrix: np.ndarray, n_cores: int, seed: int, normalize: bool, params: NoParams, taken: np.ndarray | None
) -> tuple[np.ndarray, dict[str, Any]]:
    """Farthest-point sampling: a random first item (or, after earlier rounds, the item farthest
    from every labeled and pending one), then always the item farthest from all picks so far."""
    items = torch.as_tensor(_points(matrix, normalize), device=device())
    norms = (items * items).sum(1)
    if taken is None:
        picks = [int(np.random.default_rng(seed).integers(len(items)))]
        closest = torch.full((len(items),), torch.inf, dtype=items.dtype, device=items.device)
    else:
        anchors = items[torch.as_tensor(np.flatnonzero(taken), device=items.device)]
        _, scores = top_matches(items, anchors, 1, "euclidean")
        closest = (norms - scores[:, 0]).clamp_(min=0.0)
        closest[torch.as_tensor(taken, device=items.device)] = -1.0
        picks = [int(torch.argmax(closest))]
    for _ in Progress(range(n_cores), "k-center greedy"):
        latest = picks[-1]
        to_latest = (norms + norms[latest] - 2.0 * (items @ items[latest])).clamp_(min=0.0)
        torch.minimum(closest, to_latest, out=closest)
        closest[latest] = -1.0  # never picked twice, even if rounding leaves it above 0
        if len(picks) < n_cores:
            picks.append(int(torch.argmax(closest)))  # first maximum on ties
    return np.array(picks, dtype=np.int64), {"normalize": normalize}


def _kmeans(
    matrix: np.ndarray, n_cores: int, seed: int, normalize: bool, params: KMeansParams, taken: np.ndarray | None
) -> tuple[np.ndarray, dict[str, Any]]:
    """Lloyd's k-means (k-means++ seeding), then the nearest unclaimed item to each centroid.

    Written in torch rather than taken from scikit-learn: it runs on CUDA with the other methods,
    and later rounds need fixed centres (sklearn's KMeans has no way to keep some centres still).

    Labeled and pending items (``taken``) are fixed centres: they keep their place, take their
    share of the pool, and only the ``n_cores`` new centroids move.
    """
    items = torch.as_tensor(_points(matrix, normalize), device=device())
    fixed = None if taken is None else items[torch.as_tensor(np.flatnonzero(taken), device=items.device)]
    rng = np.random.default_rng(seed)
    centroids = _kmeans_plus_plus(items, n_cores, rng, fixed)
    threshold = params.tol * float(items.var(dim=0).mean())
    n_iter, shift = 0, float("inf")
    for n_iter in Progress(range(1, params.max_iter + 1), "k-means"):  # noqa: B007 (reported after the loop)
        every = centroids if fixed is None else torch.cat([centroids, fixed])
        labels, distances = nearest_centres(items, every, 1, exact=False)
        labels_t = torch.as_tensor(labels[:, 0], device=items.device)
        members = items
        if fixed is not None:  # only items served by a new centroid move it
            own = labels_t < n_cores
            labels_t, members = labels_t[own], items[own]
        sums = scatter_rows(labels_t, members, torch.ones(len(members), device=items.device), n_cores)
        counts = torch.bincount(labels_t, minlength=n_cores)
        updated = sums / counts.clamp(min=1)[:, None].to(sums.dtype)
        empty = torch.nonzero(counts == 0).flatten()
        if len(empty):  # re-seed empty clusters at the items worst served by their centroid
            worst = np.argsort(-distances[:, 0], kind="stable")[: len(empty)]
            updated[empty] = items[torch.as_tensor(worst, device=items.device)]
        shift = float(((updated - centroids) ** 2).sum())
        centroids = updated
        if shift <= threshold:
            break
    picks = claim_items(centroids, items, metric="euclidean", exclude=taken)
    return picks, {"n_iter": n_iter, "final_shift": shift, "normalize": normalize}


def _kmeans_plus_plus(
    items: torch.Tensor, n_centres: int, rng: np.random.Generator, fixed: torch.Tensor | None = None
) -> torch.Tensor:
    """k-means++ seeding (D^2 sampling) on a random sample of the pool, continuing from the
    ``fixed`` centres when there are any."""
    sample_size = min(len(items), max(3 * n_centres, _KMEANS_INIT_MIN))
    if sample_size < len(items):
        chosen = np.sort(rng.choice(len(items), sample_size, replace=False))
        items = items[torch.as_tensor(chosen, device=items.device)]
    norms = (items * items).sum(1)
    if fixed is None:
        picks = [int(rng.integers(len(items)))]
        closest = np.full(len(items), np.inf)
    else:
        _, scores = top_matches(items, fixed, 1, "euclidean")
        closest = (norms - scores[:, 0]).clamp_(min=0.0).cpu().numpy().astype(np.float64)
        picks = [_d2_sample(closest, rng)]
    for _ in range(n_centres):
        latest = picks[-1]
        to_latest = (norms + norms[latest] - 2.0 * (items @ items[latest])).clamp_(min=0.0)
        closest = np.minimum(closest, to_latest.cpu().numpy().astype(np.float64))
        closest[picks[-1]] = 0.0
        if len(picks) < n_centres:
            picks.append(_d2_sample(closest, rng))
    return items[torch.as_tensor(picks, device=items.device)].clone()


def _d2_sample(closest: np.ndarray, rng: np.random.Generator) -> int:
    """An item drawn with probability proportional to its squared distance to the centres."""
    cumulative = np.cumsum(closest)
    target = rng.random() * cumulative[-1]
    return int(min(np.searchsorted(cumulative, target, side="right"), len(closest) - 1))


CoreMethod = Callable[[np.ndarray, int, int, bool, Any, np.ndarray | None], tuple[np.ndarray, dict[str, Any]]]
CORE_METHODS: dict[str, tuple[CoreMethod, type]] = {
    "activeft": (activeft, ActiveFTParams),  # runs on the Compute, over shards (see core_pick_order)
    "kmeans": (_kmeans, KMeansParams),
    "kcenter": (_kcenter, NoParams),
    "random": (_random, NoParams),
}

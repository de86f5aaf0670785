"""Stage 2a: pseudo-class assignment (docs/algorithm.md §4.1) and IDC denoising (§4.2, §4.3)."""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

from bilaf import defaults
from bilaf.compute import Compute, LocalCompute, Task
from bilaf.errors import InvalidInputError
from bilaf.progress import Counted, Progress

from ._geometry import ClusterDistances, nearest_centres, rows_per_block, stage2_points
from ._validation import validate_core_indices, validate_source
from .results import ClusterStats, DenoisedPool
from .shards import FeatureRows, as_source, shard_bounds
from .variants import Stage2Settings, resolve_settings


@dataclass(frozen=True)
class IdcParams:
    """IDC hyper-parameters (paper defaults: k = 10, P_in = 0.1, P_rm = 0.1; no denoising < 10)."""

    n_neighbors: int = defaults.N_NEIGHBORS
    ring_fraction: float = defaults.RING_FRACTION
    removal_ratio: float = defaults.REMOVAL_RATIO
    min_cluster_size: int = defaults.MIN_CLUSTER_SIZE

    def __post_init__(self) -> None:
        if not _is_positive_int(self.n_neighbors):
            raise InvalidInputError(f"n_neighbors must be a positive integer; got {self.n_neighbors!r}")
        if not 0.0 < self.ring_fraction <= 1.0:
            raise InvalidInputError(f"ring_fraction must be in (0, 1]; got {self.ring_fraction!r}")
        if not 0.0 <= self.removal_ratio < 1.0:
            raise InvalidInputError(f"removal_ratio must be in [0, 1); got {self.removal_ratio!r}")
        if not _is_positive_int(self.min_cluster_size):
            raise InvalidInputError(f"min_cluster_size must be a positive integer; got {self.min_cluster_size!r}")


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


def denoise(
    features: Any,
    cores: Any,
    *,
    variant: str = defaults.DENOISE_VARIANT,
    n_neighbors: int = defaults.N_NEIGHBORS,
    ring_fraction: float = defaults.RING_FRACTION,
    removal_ratio: float = defaults.REMOVAL_RATIO,
    min_cluster_size: int = defaults.MIN_CLUSTER_SIZE,
    normalize: bool | None = None,
    exact: bool | None = None,
    density: str | None = None,
    absorb_remainder: bool | None = None,
    compute: Compute | None = None,
) -> DenoisedPool:
    """Assign every item to its nearest core and drop each cluster's peripheral items with IDC.

    ``cores`` is a CoreSelection or item indices (sorted ascending; cluster a = a-th smallest
    core). The switches left as None come from ``variant`` (see ``variants.VARIANTS``).
    ``features`` may be a ``FeatureRows``; ``compute`` runs the pool's shards (nearest cores) and
    one task per cluster (its IDC) where it says, with the same result everywhere.
    """
    settings = resolve_settings(
        variant, normalize=normalize, exact=exact, density=density, absorb_remainder=absorb_remainder
    )
    params = IdcParams(n_neighbors, ring_fraction, removal_ratio, min_cluster_size)
    source = validate_source(features, compute, cores=cores, normalize=settings.normalize)
    core_ids = validate_core_indices(cores, len(source))
    return denoise_validated(source, core_ids, variant, settings, params, compute)


def denoise_validated(
    features: FeatureRows | np.ndarray,
    core_ids: np.ndarray,
    variant: str,
    settings: Stage2Settings,
    params: IdcParams,
    compute: Compute | None = None,
) -> DenoisedPool:
    """``denoise`` on already validated inputs (used by the whole-method pipeline)."""
    source = as_source(features)
    compute = compute or LocalCompute()
    assignment = nearest_cores(source, core_ids, 1, settings, compute)[0][:, 0]
    assignment[core_ids] = np.arange(len(core_ids))  # a core is always in its own cluster
    absorption_rank = np.full(len(source), -1, dtype=np.int64)
    kept = np.zeros(len(source), dtype=bool)
    clusters = cluster_members(assignment, len(core_ids))
    tasks = [
        Task(
            name=f"idc-cluster-{cluster}",
            function=_idc_task,
            args=(source.subset(members), int(np.searchsorted(members, core_ids[cluster])), params, settings),
            memory_bytes=_cluster_bytes(len(members), source.n_columns, settings.exact),
            place=cluster,
        )
        for cluster, members in enumerate(clusters)
    ]
    outcomes: list[tuple[np.ndarray, int]] = [None] * len(tasks)  # type: ignore[list-item]
    for cluster, outcome in Progress(Counted(compute.as_completed(tasks), len(tasks)), "IDC denoising"):
        outcomes[cluster] = outcome
    stats = []
    for cluster, (members, (absorbed, n_kept)) in enumerate(zip(clusters, outcomes)):
        absorption_rank[members[absorbed]] = np.arange(len(absorbed))
        kept[members[absorbed[:n_kept]]] = True
        stats.append(
            ClusterStats(cluster=cluster, core_index=int(core_ids[cluster]), size=len(members), denoised_size=n_kept)
        )
    return DenoisedPool(
        cores=core_ids,
        assignment=assignment,
        kept=kept,
        absorption_rank=absorption_rank,
        normalized=settings.normalize,
        variant=variant,
        params={**vars(params), **settings.to_dict()},
        clusters=tuple(stats),
    )


def _idc_task(
    members: FeatureRows, core_position: int, params: IdcParams, settings: Stage2Settings
) -> tuple[np.ndarray, int]:
    """One cluster's IDC, where a task runs: (absorption order, number kept), positions in the cluster."""
    if len(members) < params.min_cluster_size:
        return np.arange(len(members)), len(members)
    points = stage2_points(members.read(), settings.normalize, settings.exact)
    return _idc(ClusterDistances(points, settings.exact), core_position, params, settings)


def _cluster_bytes(n_members: int, n_columns: int, exact: bool) -> int:
    """What a cluster task holds: its points and (when small enough to be dense) their distances."""
    width = 8 if exact else 4
    dense = n_members * n_members * width if n_members <= 16_384 else 0
    return n_members * n_columns * width + dense


def nearest_cores(
    source: FeatureRows,
    core_ids: np.ndarray,
    n_nearest: int,
    settings: Stage2Settings,
    compute: Compute,
    rows: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``nearest_centres`` of every item (or of ``rows``) to the cores, one task per shard of them."""
    centres = stage2_points(source.take(core_ids), settings.normalize, settings.exact)
    targets = source if rows is None else source.subset(rows)
    width = 8 if settings.exact else 4
    bounds = shard_bounds(len(targets), width * (source.n_columns + len(core_ids)))
    tasks = [
        Task(
            name=f"nearest-cores-{index}",
            function=_nearest_task,
            args=(targets.shard(start, stop), centres, n_nearest, settings),
            memory_bytes=(stop - start) * width * (source.n_columns + len(core_ids)),
            place=index,
        )
        for index, (start, stop) in enumerate(bounds)
    ]
    parts = compute.map(tasks)
    return np.concatenate([part[0] for part in parts]), np.concatenate([part[1] for part in parts])


def _nearest_task(
    rows: FeatureRows, centres: np.ndarray, n_nearest: int, settings: Stage2Settings
) -> tuple[np.ndarray, np.ndarray]:
    return nearest_centres(
        stage2_points(rows.read(), settings.normalize, settings.exact), centres, n_nearest, settings.exact
    )


def cluster_members(assignment: np.ndarray, n_clusters: int) -> list[np.ndarray]:
    """Items of each cluster in ascending index order."""
    order = np.argsort(assignment, kind="stable")
    bounds = np.cumsum(np.bincount(assignment, minlength=n_clusters))[:-1]
    return np.split(order, bounds)


def _idc(
    distances: ClusterDistances, core_position: int, params: IdcParams, settings: Stage2Settings
) -> tuple[np.ndarray, int]:
    """Grow the cluster ring by ring from its core; return (absorption order, number kept).

    Ring 1 is the s nearest items to the core; every later ring adds the s candidates of smallest
    density distance to the absorbed set (ties: lower position). The last absorbed are noise.
    """
    n = distances.n
    ring = max(1, int(n * params.ring_fraction))
    everything = np.arange(n)
    from_core = distances.block(np.array([core_position]), everything)[0]
    rings = [np.argsort(from_core, kind="stable")[:ring]]
    absorbed = np.zeros(n, dtype=bool)
    absorbed[rings[0]] = True
    n_rings = -(-n // ring) if settings.absorb_remainder else int(n / ring)
    for _ in range(1, n_rings):
        candidates = np.flatnonzero(~absorbed)
        if candidates.size == 0:
            break
        density = _density(distances, candidates, np.concatenate(rings), params.n_neighbors, settings.density)
        new = candidates[np.argsort(density, kind="stable")[:ring]]
        absorbed[new] = True
        rings.append(new)
    order = np.concatenate(rings)
    if settings.absorb_remainder:
        n_kept = n - int(n * params.removal_ratio)
    else:  # the code floors the kept count of the absorbed list: removal >= P_rm
        n_kept = int(len(order) * (1 - params.removal_ratio))
    return order, n_kept


def _density(
    distances: ClusterDistances, candidates: np.ndarray, grown: np.ndarray, n_neighbors: int, form: str
) -> np.ndarray:
    """Density distance of each candidate to the absorbed list ``grown`` (§4.2 / §4.3)."""
    k = min(n_neighbors, len(grown))
    density = np.empty(len(candidates), dtype=np.float64)
    step = rows_per_block(len(grown))
    for start in range(0, len(candidates), step):
        rows = candidates[start : start + step]
        to_grown = distances.block(rows, grown)
        if form == "paper":
            nearest = np.partition(to_grown, k - 1, axis=1)[:, :k]
            density[start : start + len(rows)] = nearest.mean(axis=1)
            continue
        # Code form: ranks (positions in the absorbed list) of the k nearest absorbed items, in
        # ascending distance order, then used as positions inside the cluster (the slip).
        ranks = np.argpartition(to_grown, k - 1, axis=1)[:, :k]
        by_distance = np.argsort(np.take_along_axis(to_grown, ranks, axis=1), axis=1, kind="stable")
        ranks = np.take_along_axis(ranks, by_distance, axis=1)
        at_positions = distances.block(rows, np.arange(len(grown)))
        density[start : start + len(rows)] = np.take_along_axis(at_positions, ranks, axis=1).mean(1)
    return density


def grow_from_seeds(distances: ClusterDistances, seeds: np.ndarray, params: IdcParams) -> tuple[np.ndarray, int]:
    """IDC started from several known members (a class region's labeled items) instead of one core.

    The seeds are absorbed first; every ring then adds the s candidates of smallest density
    distance (paper form) to everything absorbed so far, until the region is used up; the last
    ``removal_ratio`` of the region are noise. Returns (absorption order, number kept).
    """
    n = distances.n
    ring = max(1, int(n * params.ring_fraction))
    absorbed = np.zeros(n, dtype=bool)
    absorbed[seeds] = True
    rings = [np.sort(seeds)]
    for _ in Progress(range(-(-(n - len(seeds)) // ring)), "IDC rings"):
        candidates = np.flatnonzero(~absorbed)
        density = _density(distances, candidates, np.concatenate(rings), params.n_neighbors, "paper")
        new = candidates[np.argsort(density, kind="stable")[:ring]]
        absorbed[new] = True
        rings.append(new)
    return np.concatenate(rings), max(len(seeds), n - int(n * params.removal_ratio))

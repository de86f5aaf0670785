"""Euclidean distance primitives: chunked, never N x N, never a full N x K float64 matrix.

Two precisions:
* fast (default variant): float32 torch matmuls, ``|a|^2 + |b|^2 - 2ab``, on CUDA when available;
* exact (repo variant): float64 matmuls only to shortlist candidates, then the very values SciPy's
  ``cdist`` gives (the official code's distance function), so orderings and ties match it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from scipy.spatial.distance import cdist

from bilaf.errors import InvalidInputError

BLOCK_ELEMENTS = 1 << 24  # entries per distance block (64 MB in float32)
DENSE_CLUSTER_LIMIT = 4096  # larger clusters get their distances block by block, never n x n
# Exact distances (SciPy, ~30x slower than a matmul) are worth keeping: one dense matrix up to
# this size (2 GiB of float64), so that no pair is computed twice.
EXACT_DENSE_LIMIT = 16_384
_SHORTLIST_MARGIN = 3  # extra candidates kept by shortlisting searches
_SHORTLIST_TOLERANCE = 1e-9  # relative slack that covers float64 matmul rounding


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def l2_normalize(matrix: np.ndarray, dtype: type = np.float32) -> np.ndarray:
    """Row-wise unit vectors, computed chunk by chunk into one new array."""
    out = np.empty(matrix.shape, dtype=dtype)
    for start in range(0, len(matrix), BLOCK_ELEMENTS // max(1, matrix.shape[1])):
        block = matrix[start : start + BLOCK_ELEMENTS // max(1, matrix.shape[1])].astype(dtype)
        out[start : start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def stage2_points(features: np.ndarray, normalize: bool, exact: bool) -> np.ndarray:
    """The feature matrix stage 2 measures distances on (float64 for exact, else float32)."""
    dtype = np.float64 if exact else np.float32
    if normalize:
        return l2_normalize(features, dtype)
    return np.ascontiguousarray(features, dtype=dtype)


def exact_distances(rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """SciPy ``cdist`` (Euclidean), row chunks on torch's thread count. A pair's value does not
    depend on the chunk it is computed in, and SciPy releases the GIL, so threads split the work."""
    n_threads = max(1, torch.get_num_threads())
    if n_threads == 1 or len(rows) * len(columns) < 1 << 16:
        return cdist(rows, columns)
    out = np.empty((len(rows), len(columns)))
    step = -(-len(rows) // (4 * n_threads))

    def fill(start: int) -> None:
        out[start : start + step] = cdist(rows[start : start + step], columns)

    with ThreadPoolExecutor(n_threads) as pool:
        list(pool.map(fill, range(0, len(rows), step)))
    return out


def rows_per_block(n_columns: int) -> int:
    return max(1, BLOCK_ELEMENTS // max(1, n_columns))


def squared_distances(
    rows: torch.Tensor, row_norms: torch.Tensor, columns: torch.Tensor, column_norms: torch.Tensor
) -> torch.Tensor:
    """``|a|^2 + |b|^2 - 2ab`` clamped at 0 (rounding can make it slightly negative)."""
    return torch.addmm(row_norms[:, None] + column_norms[None, :], rows, columns.T, alpha=-2.0).clamp_(min=0.0)


def nearest_centres(
    points: np.ndarray | torch.Tensor,
    centres: np.ndarray | torch.Tensor,
    n_nearest: int,
    exact: bool,
    rows: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """For every point (or ``points[rows]``), its ``n_nearest`` centres by (distance, centre id).

    Returns (centre ids int64, distances) of shape (len(rows), n_nearest). The exact path gives
    SciPy ``cdist`` values and breaks ties by lowest centre id, like ``np.argmin`` on ``cdist``.
    """
    n_nearest = min(n_nearest, len(centres))
    n_rows = len(points) if rows is None else len(rows)
    dev = device()
    dtype = torch.float64 if exact else torch.float32
    centre_t = torch.as_tensor(centres, dtype=dtype, device=dev)
    n_short = min(len(centres), n_nearest + _SHORTLIST_MARGIN) if exact else n_nearest
    ids = np.empty((n_rows, n_short), dtype=np.int64)
    values = np.empty((n_rows, n_short), dtype=np.float64 if exact else np.float32)
    step = rows_per_block(len(centres))
    for start in range(0, n_rows, step):
        chunk = slice(start, start + step) if rows is None else rows[start : start + step]
        block = torch.as_tensor(points[chunk], dtype=dtype, device=dev)
        if exact:
            d2 = squared_distances(block, (block * block).sum(1), centre_t, (centre_t * centre_t).sum(1))
            best, best_ids = torch.topk(d2, n_short, dim=1, largest=False, sorted=True)
        else:
            best_ids, scores = top_matches(block, centre_t, n_short, "euclidean")
            best = ((block * block).sum(1)[:, None] - scores).clamp_(min=0.0)
        ids[start : start + len(block)] = best_ids.cpu().numpy()
        values[start : start + len(block)] = best.cpu().numpy()
    if not exact:
        return ids, np.sqrt(values)
    rows = np.arange(n_rows) if rows is None else rows
    return _exact_shortlist(np.asarray(points), rows, np.asarray(centres), ids, values, n_nearest)


def _scores(queries: torch.Tensor, keys: torch.Tensor, key_sq: torch.Tensor | None) -> torch.Tensor:
    """Match scores, higher is better: ``q.k`` (dot) or ``2 q.k - |k|^2`` (euclidean, i.e.
    ``|q|^2`` minus the squared distance)."""
    if key_sq is None:
        return queries @ keys.T
    return torch.addmm(-key_sq[None, :], queries, keys.T, alpha=2.0)


def _best_first(ids: torch.Tensor, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort each row by score (descending), ties to the lower id."""
    by_id = torch.argsort(ids, dim=1)
    ids, scores = ids.gather(1, by_id), scores.gather(1, by_id)
    order = torch.argsort(scores, dim=1, descending=True, stable=True)
    return ids.gather(1, order), scores.gather(1, order)


def top_matches(
    queries: torch.Tensor, keys: torch.Tensor, n_best: int, metric: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``n_best`` best keys of every query and their scores, best first (ties: lower id).

    ``metric`` "dot": largest ``q.k``; "euclidean": nearest, score ``2 q.k - |k|^2``.
    """
    n_best = min(n_best, len(keys))
    key_sq = (keys * keys).sum(1) if metric == "euclidean" else None
    ids_out = torch.empty((len(queries), n_best), dtype=torch.long, device=queries.device)
    scores_out = torch.empty((len(queries), n_best), dtype=queries.dtype, device=queries.device)
    step = rows_per_block(len(keys))
    for start in range(0, len(queries), step):
        scores = _scores(queries[start : start + step], keys, key_sq)
        if n_best == 1:
            best, ids = scores.max(dim=1, keepdim=True)  # first maximum: lower id
        else:
            values, ids = torch.topk(scores, min(len(keys), n_best + _SHORTLIST_MARGIN), dim=1)
            ids, best = (kept[:, :n_best] for kept in _best_first(ids, values))
        ids_out[start : start + len(scores)] = ids
        scores_out[start : start + len(scores)] = best
    return ids_out, scores_out


def _exact_shortlist(
    points: np.ndarray, rows: np.ndarray, centres: np.ndarray, ids: np.ndarray, approx_d2: np.ndarray, n_nearest: int
) -> tuple[np.ndarray, np.ndarray]:
    """Replace float64 matmul shortlists of ``points[rows]`` by ``cdist`` values, re-sorted by
    (distance, id). A row whose shortlist might miss a tie (its last candidate is within
    rounding slack of its n-th) is recomputed against every centre.
    """
    n_short = ids.shape[1]
    distances = np.empty(ids.shape, dtype=np.float64)
    order = np.argsort(ids, axis=None, kind="stable")
    bounds = np.flatnonzero(np.diff(ids.ravel()[order])) + 1
    for group in np.split(order, bounds):
        centre = ids.ravel()[group[0]]
        distances.ravel()[group] = cdist(points[rows[group // n_short]], centres[centre : centre + 1])[:, 0]
    if n_short < len(centres):
        max_centre_sq = np.einsum("ij,ij->i", centres, centres).max()
        slack = np.empty(len(rows))
        step = rows_per_block(points.shape[1])
        for start in range(0, len(rows), step):
            block = points[rows[start : start + step]]
            slack[start : start + step] = _SHORTLIST_TOLERANCE * (np.einsum("ij,ij->i", block, block) + max_centre_sq)
        unsure = np.flatnonzero(approx_d2[:, -1] - approx_d2[:, n_nearest - 1] <= slack)
        if unsure.size:
            full = exact_distances(points[rows[unsure]], centres)
            every = np.broadcast_to(np.arange(len(centres)), full.shape)
            pick = np.lexsort((every, full), axis=-1)[:, :n_short]
            ids[unsure] = pick
            distances[unsure] = np.take_along_axis(full, pick, axis=1)
    order = np.lexsort((ids, distances), axis=-1)[:, :n_nearest]
    return np.take_along_axis(ids, order, axis=1), np.take_along_axis(distances, order, axis=1)


class ClusterDistances:
    """Distances among one cluster's points: a dense matrix when small, blocks on demand if large.

    ``block(rows, cols)`` returns the (len(rows), len(cols)) distances; self-distances are exactly
    0 in both precisions. Exact mode returns SciPy ``cdist`` values (shape-independent per pair,
    hence identical to the official code's full per-cluster matrices).
    """

    def __init__(self, points: np.ndarray, exact: bool):
        self.points = points
        self.n = len(points)
        self.exact = exact
        if not exact:
            self._tensor = torch.as_tensor(points, dtype=torch.float32, device=device())
            self._norms = (self._tensor * self._tensor).sum(1)
        everything = np.arange(self.n)
        small = self.n <= (EXACT_DENSE_LIMIT if exact else DENSE_CLUSTER_LIMIT)
        self._dense = self._compute(everything, everything) if small else None

    def block(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        if self._dense is not None:
            return self._dense[np.ix_(rows, cols)]
        return self._compute(rows, cols)

    def _compute(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        if self.exact:
            return exact_distances(self.points[rows], self.points[cols])
        rows_t = torch.as_tensor(rows, device=self._tensor.device)
        cols_t = torch.as_tensor(cols, device=self._tensor.device)
        d2 = squared_distances(self._tensor[rows_t], self._norms[rows_t], self._tensor[cols_t], self._norms[cols_t])
        _, same_row, same_col = np.intersect1d(rows, cols, assume_unique=True, return_indices=True)
        d2[torch.as_tensor(same_row, device=d2.device), torch.as_tensor(same_col, device=d2.device)] = 0.0
        return d2.sqrt_().cpu().numpy()


def scatter_rows(owner: torch.Tensor, rows: torch.Tensor, weights: torch.Tensor, n_groups: int) -> torch.Tensor:
    """``out[g] = sum of weights[i] * rows[i] over i with owner[i] == g``, run-to-run identical.

    CPU: one sparse (groups x items) matmul, no items x d temporary. CUDA sparse kernels and
    ``index_add_`` may use atomics, so there a chunked one-hot matmul does it.
    """
    if not rows.is_cuda:
        positions = torch.arange(len(rows), device=rows.device)
        selector = torch.sparse_coo_tensor(
            torch.stack([owner, positions]), weights, (n_groups, len(rows)), check_invariants=False
        )
        return torch.sparse.mm(selector, rows)
    out = torch.zeros((n_groups, rows.shape[1]), dtype=rows.dtype, device=rows.device)
    step = rows_per_block(n_groups)
    for start in range(0, len(rows), step):
        groups = owner[start : start + step]
        one_hot = torch.zeros((n_groups, len(groups)), dtype=rows.dtype, device=rows.device)
        one_hot[groups, torch.arange(len(groups), device=rows.device)] = weights[start : start + step]
        out += one_hot @ rows[start : start + step]
    return out


def best_items(
    queries: torch.Tensor, items: torch.Tensor, n_best: int, metric: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each query, its ``n_best`` best items (best first), streaming over item chunks.

    Returns (ids, scores, bound): every item not listed scores at most ``bound``.
    """
    n_best = min(n_best, len(items))
    best_scores = torch.empty((len(queries), 0), dtype=queries.dtype, device=queries.device)
    best_ids = torch.empty((len(queries), 0), dtype=torch.long, device=queries.device)
    step = rows_per_block(len(queries))
    for start in range(0, len(items), step):
        chunk = items[start : start + step]
        key_sq = (chunk * chunk).sum(1) if metric == "euclidean" else None
        scores = torch.cat([best_scores, _scores(queries, chunk, key_sq)], dim=1)
        ids = torch.cat(
            [best_ids, torch.arange(start, start + len(chunk), device=queries.device).expand(len(queries), -1)], dim=1
        )
        best_scores, position = torch.topk(scores, n_best, dim=1)
        best_ids = ids.gather(1, position)
    bound = best_scores[:, -1].clone()
    if n_best == len(items):
        bound.fill_(-torch.inf)
    best_ids, best_scores = _best_first(best_ids, best_scores)
    return best_ids.cpu().numpy(), best_scores.cpu().numpy(), bound.cpu().numpy()


def claim_items(
    queries: torch.Tensor, items: torch.Tensor, metric: str, shortlist: int = 64, exclude: np.ndarray | None = None
) -> np.ndarray:
    """Map each query, in query order, to its best item not claimed by an earlier query (§3.4).

    Uses a top-``shortlist`` per query; a query whose shortlist holds no free item that beats
    every item outside it (all taken, or a tie at the cut) falls back to a full ranking of the
    pool. Returns one distinct item per query ("dot": largest inner product, "euclidean": nearest).
    Items marked in ``exclude`` (e.g. labeled or pending ones) are never claimed.
    """
    taken = np.zeros(len(items), dtype=bool) if exclude is None else np.array(exclude, dtype=bool)
    if len(queries) > len(items) - np.count_nonzero(taken):
        raise InvalidInputError(
            f"cannot map {len(queries)} queries to distinct items of a pool of {len(items) - np.count_nonzero(taken)}"
        )
    if exclude is not None:  # excluded items may crowd a shortlist: a few more spare full rankings
        shortlist += min(int(np.count_nonzero(taken)), 3 * shortlist)
    shortlists, scores, bounds = best_items(queries, items, shortlist, metric)
    key_sq = (items * items).sum(1) if metric == "euclidean" else None
    claimed = np.empty(len(queries), dtype=np.int64)
    for query, candidates in enumerate(shortlists):
        free = np.flatnonzero(~taken[candidates])
        if free.size and scores[query, free[0]] > bounds[query]:
            choice = candidates[free[0]]
        else:
            ranking = (
                torch.argsort(_scores(queries[query : query + 1], items, key_sq)[0], descending=True, stable=True)
                .cpu()
                .numpy()
            )
            choice = ranking[~taken[ranking]][0]
        claimed[query] = choice
        taken[choice] = True
    return claimed

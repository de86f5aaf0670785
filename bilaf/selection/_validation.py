"""The one input check shared by every public entry point: clear ValueErrors before any work."""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bilaf.errors import InvalidInputError

from .shards import FeatureRows, shard_bounds

_CHECK_ROWS = 1 << 14  # rows per chunk, so checks never copy the whole pool at once
_HASH_SEED = 20240315


def validate_inputs(
    features: Any, *, budget: Any = None, n_cores: Any = None, cores: Any = None, normalize: bool = False
) -> np.ndarray:
    """Check features and counts; return the features as a C-contiguous float32/float64 matrix.

    Raises ValueError naming the problem for: non-2-D or empty features, non-real dtypes, NaN or
    infinite rows, identical rows, zero-norm rows when ``normalize``, non-integer or non-positive
    counts, budget or cores larger than the pool, budget smaller than the number of cores, and core
    indices that are out of range or repeated.
    """
    matrix = _as_matrix(features)
    _check_counts(matrix.shape[0], budget=budget, n_cores=n_cores, cores=cores)
    checks = _row_checks(matrix, 0, normalize)
    _report(checks)
    _check_distinct_hashes(checks.hashes, lambda row: matrix[row])
    return matrix


def _check_counts(n_items: int, *, budget: Any, n_cores: Any, cores: Any) -> None:
    """The budget, the number of cores and the core indices against the pool's size."""
    if budget is not None:
        budget = _positive_int("budget", budget)
        if budget > n_items:
            raise InvalidInputError(f"budget {budget} is larger than the pool ({n_items} items)")
    if n_cores is not None:
        n_cores = _positive_int("n_cores", n_cores)
        if n_cores > n_items:
            raise InvalidInputError(f"n_cores {n_cores} is larger than the pool ({n_items} items)")
    if cores is not None:
        n_cores = len(validate_core_indices(cores, n_items))
    if budget is not None and n_cores is not None and budget < n_cores:
        raise InvalidInputError(
            f"budget {budget} is smaller than the number of cores ({n_cores}): every core is part of the selection"
        )


def validate_core_indices(cores: Any, n_items: int) -> np.ndarray:
    """Core item indices, ascending int64; ValueError if empty, out of range or repeated."""
    if isinstance(cores, torch.Tensor):
        cores = cores.detach().cpu().numpy()
    array = np.asarray(getattr(cores, "indices", cores))
    if array.ndim != 1 or array.size == 0:
        raise InvalidInputError(f"cores must be a non-empty 1-D list of item indices; got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise InvalidInputError(f"cores must be integer item indices; got dtype {array.dtype}")
    array = np.sort(array.astype(np.int64))
    if array[0] < 0 or array[-1] >= n_items:
        bad = array[0] if array[0] < 0 else array[-1]
        raise InvalidInputError(f"cores contains index {bad} outside the pool [0, {n_items})")
    repeated = array[1:][array[1:] == array[:-1]]
    if repeated.size:
        raise InvalidInputError(f"cores contains index {repeated[0]} more than once")
    return array


def _as_matrix(features: Any) -> np.ndarray:
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().numpy()
    if features is None:
        raise InvalidInputError("features is empty: got None")
    array = np.asarray(features)
    if array.ndim != 2:
        raise InvalidInputError(f"features must be a 2-D array (items x dimensions); got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise InvalidInputError(f"features is empty: got shape {array.shape}")
    if array.dtype == np.bool_ or not (
        np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)
    ):
        raise InvalidInputError(f"features must hold real numbers; got dtype {array.dtype}")
    dtype = np.float64 if array.dtype == np.float64 else np.float32
    return np.ascontiguousarray(array, dtype=dtype)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise InvalidInputError(f"{name} must be an integer; got {value!r}")
    if value <= 0:
        raise InvalidInputError(f"{name} must be positive; got {value}")
    return int(value)


@dataclass(frozen=True)
class RowChecks:
    """What the row checks found in a block of rows: the rows with NaN/inf values, the first
    all-zero row (when normalising), and an exact hash of every row (to find identical rows)."""

    not_finite: np.ndarray
    first_zero: int | None
    hashes: np.ndarray


def _row_checks(matrix: np.ndarray, offset: int, normalize: bool) -> RowChecks:
    bad_rows: list[np.ndarray] = []
    first_zero = None
    for start in range(0, len(matrix), _CHECK_ROWS):
        block = matrix[start : start + _CHECK_ROWS]
        finite = np.isfinite(block).all(axis=1)
        bad_rows.append(offset + start + np.flatnonzero(~finite))
        if normalize and first_zero is None:
            zero = np.flatnonzero(~block.any(axis=1))
            if zero.size:
                first_zero = offset + start + int(zero[0])
    return RowChecks(np.concatenate(bad_rows), first_zero, _row_hashes(matrix))


def _report(checks: RowChecks) -> None:
    """The first problem found, as the error that names it."""
    bad = checks.not_finite
    if bad.size:
        raise InvalidInputError(
            f"features row {bad[0]} contains NaN or infinite values ({bad.size} such rows in total)"
        )
    if checks.first_zero is not None:
        raise InvalidInputError(f"features row {checks.first_zero} is all zeros and cannot be L2-normalised")


def _row_hashes(matrix: np.ndarray) -> np.ndarray:
    """An exact hash of every row (integer arithmetic on its bits; -0.0 and 0.0 hash alike)."""
    words = np.uint64 if matrix.dtype == np.float64 else np.uint32
    weights = np.random.default_rng(_HASH_SEED).integers(
        1, np.iinfo(np.int64).max, size=matrix.shape[1], dtype=np.uint64
    ) | np.uint64(1)
    hashes = np.empty(len(matrix), dtype=np.uint64)
    for start in range(0, len(matrix), _CHECK_ROWS):
        block = matrix[start : start + _CHECK_ROWS] + 0.0  # -0.0 and 0.0 are the same value
        hashes[start : start + len(block)] = (block.view(words).astype(np.uint64) * weights).sum(
            axis=1, dtype=np.uint64
        )
    return hashes


def _check_distinct_hashes(hashes: np.ndarray, row: Any) -> None:
    """Rows with equal hashes are compared (``row(i)`` reads row i); identical ones are an error."""
    order = np.argsort(hashes, kind="stable")
    sorted_hashes = hashes[order]
    same = np.flatnonzero(sorted_hashes[1:] == sorted_hashes[:-1])
    duplicates: list[tuple[int, int]] = []
    for position in same:
        first, second = order[position], order[position + 1]
        if np.array_equal(row(first), row(second)):
            duplicates.append((int(min(first, second)), int(max(first, second))))
    if duplicates:
        first, second = min(duplicates)
        raise InvalidInputError(
            f"features rows {first} and {second} are identical "
            f"({len(duplicates)} duplicate rows in total); remove duplicate items "
            "before selection"
        )


def validate_source(
    features: Any,
    compute: Any = None,
    *,
    budget: Any = None,
    n_cores: Any = None,
    cores: Any = None,
    normalize: bool = False,
) -> FeatureRows:
    """``validate_inputs`` for an array or a ``FeatureRows`` (checked shard by shard where the
    ``compute`` runs tasks, never all rows in one process); returns the rows to select from."""
    if not isinstance(features, FeatureRows):
        matrix = validate_inputs(features, budget=budget, n_cores=n_cores, cores=cores, normalize=normalize)
        return FeatureRows.of_array(matrix)
    _check_counts(len(features), budget=budget, n_cores=n_cores, cores=cores)
    from bilaf.compute import LocalCompute, Task

    compute = compute or LocalCompute()
    bounds = shard_bounds(len(features), 4 * features.n_columns)
    tasks = [
        Task(f"check-rows-{index}", _check_shard, (features.shard(start, stop), start, normalize), 0, index)
        for index, (start, stop) in enumerate(bounds)
    ]
    parts = compute.map(tasks)
    _report(
        RowChecks(
            np.concatenate([part.not_finite for part in parts]),
            next((part.first_zero for part in parts if part.first_zero is not None), None),
            np.empty(0, np.uint64),
        )
    )
    _check_distinct_hashes(np.concatenate([part.hashes for part in parts]), lambda row: features.take([row])[0])
    return features


def _check_shard(rows: FeatureRows, offset: int, normalize: bool) -> RowChecks:
    return _row_checks(rows.read(), offset, normalize)


@dataclass(frozen=True, eq=False)
class KnownItems:
    """What earlier rounds left: a label per item (-1 = none) and the items sent but not labeled.

    ``taken`` marks both: they are never picked again, and coverage methods treat them as fixed
    anchors.
    """

    labels: np.ndarray
    pending: np.ndarray
    taken: np.ndarray

    @property
    def labeled(self) -> np.ndarray:
        return np.flatnonzero(self.labels >= 0)

    @property
    def anchors(self) -> np.ndarray:
        """Labeled and pending items, ascending."""
        return np.flatnonzero(self.taken)

    @property
    def n_free(self) -> int:
        return int(len(self.taken) - np.count_nonzero(self.taken))

    @property
    def classes(self) -> np.ndarray:
        """The distinct labels present, ascending."""
        return np.unique(self.labels[self.labels >= 0])


def validate_known(labels: Any, pending: Any, n_items: int, budget: Any = None) -> KnownItems | None:
    """Check ``labels`` (one int per item, -1 = unlabeled) and ``pending`` (item indices or a
    boolean mask); None when neither says anything. ValueError naming the problem for a wrong
    length or dtype, labels below -1, out-of-range or repeated pending indices, a pending item that
    is also labeled, and a budget larger than the items left to pick from.
    """
    if labels is None and pending is None:
        return None
    if labels is None:
        label_array = np.full(n_items, -1, dtype=np.int64)
    else:
        label_array = np.asarray(labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else labels)
        if label_array.shape != (n_items,):
            raise InvalidInputError(f"labels must hold one entry per item ({n_items}); got shape {label_array.shape}")
        if label_array.dtype == np.bool_ or not np.issubdtype(label_array.dtype, np.integer):
            raise InvalidInputError(
                f"labels must be integer class indices (-1 = unlabeled); got dtype {label_array.dtype}"
            )
        if label_array.size and label_array.min() < -1:
            raise InvalidInputError(f"labels must be class indices >= 0 or -1 (unlabeled); got {label_array.min()}")
        label_array = label_array.astype(np.int64)
    pending_mask = np.zeros(n_items, dtype=bool)
    if pending is not None:
        array = np.asarray(pending.detach().cpu().numpy() if isinstance(pending, torch.Tensor) else pending)
        if array.dtype == np.bool_:
            if array.shape != (n_items,):
                raise InvalidInputError(
                    f"a pending mask must hold one entry per item ({n_items}); got shape {array.shape}"
                )
            pending_mask = array.copy()
        elif array.size:
            if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
                raise InvalidInputError(
                    "pending must be a 1-D list of item indices or a boolean mask; "
                    f"got shape {array.shape}, dtype {array.dtype}"
                )
            if array.min() < 0 or array.max() >= n_items:
                bad = array.min() if array.min() < 0 else array.max()
                raise InvalidInputError(f"pending contains index {bad} outside the pool [0, {n_items})")
            if len(np.unique(array)) != len(array):
                raise InvalidInputError("pending contains an index more than once")
            pending_mask[array] = True
    both = np.flatnonzero(pending_mask & (label_array >= 0))
    if both.size:
        raise InvalidInputError(
            f"item {both[0]} is both labeled and pending ({both.size} such items): a labeled item is no longer pending"
        )
    known = KnownItems(
        labels=label_array, pending=np.flatnonzero(pending_mask), taken=pending_mask | (label_array >= 0)
    )
    if budget is not None and _positive_int("budget", budget) > known.n_free:
        raise InvalidInputError(
            f"budget {budget} is larger than the {known.n_free} items neither labeled nor "
            f"pending ({len(known.labeled)} labeled, {len(known.pending)} pending)"
        )
    return known

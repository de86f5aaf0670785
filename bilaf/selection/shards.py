"""The pool's rows as shards: what a selection task reads, wherever it runs.

``FeatureRows`` names the rows a selection runs on without holding them: an array of this
process, or a ``.npy`` file every worker can open (memory-mapped) with the rows it uses, in order.
A task reads only its own shard. ``shard_bounds`` cuts the pool into shards by a rule of the pool's
size alone, never of the number of workers, so the partial sums a driver adds (in shard order)
are the same wherever and on how many workers they were computed.
"""

from __future__ import annotations

import math
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bilaf.errors import InvalidInputError, MissingFileError

SHARD_BYTES = 1 << 27  # a shard's own working set (features and per-anchor bounds) is kept near 128 MiB
MIN_SHARD_ROWS = 256
MAX_SHARDS_PER_POOL = 8  # small pools still split, so that several workers share them


@dataclass(frozen=True, eq=False)
class FeatureRows:
    """Rows of a 2-D float matrix: ``rows`` of ``array`` (this process) or of the ``.npy`` at ``path``.

    ``rows`` None means every row in order. Build with ``of_array`` / ``of_file``.
    """

    path: str | None
    rows: np.ndarray | None
    n_rows: int
    n_columns: int
    array: np.ndarray | None = None

    @classmethod
    def of_array(cls, array: np.ndarray, rows: np.ndarray | None = None) -> FeatureRows:
        n_rows = len(array) if rows is None else len(rows)
        return cls(path=None, rows=_as_rows(rows), n_rows=n_rows, n_columns=array.shape[1], array=array)

    @classmethod
    def of_file(cls, path: str | Path, rows: np.ndarray | None = None) -> FeatureRows:
        """The rows of a ``.npy`` file (float32 or float64), checked now; read where tasks run."""
        path = Path(path)
        if not path.is_file():
            raise MissingFileError(f"features file {path} is missing")
        try:
            matrix = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as error:
            raise InvalidInputError(f"{path} is not a readable .npy file: {error}") from None
        if matrix.ndim != 2 or matrix.dtype not in (np.float32, np.float64):
            raise InvalidInputError(f"{path} must hold a 2-D float32/float64 matrix; got {matrix.shape} {matrix.dtype}")
        rows = _as_rows(rows)
        if rows is not None and rows.size and (rows.min() < 0 or rows.max() >= len(matrix)):
            raise InvalidInputError(f"row positions outside {path}'s {len(matrix)} rows")
        n_rows = len(matrix) if rows is None else len(rows)
        return cls(path=str(path.resolve()), rows=rows, n_rows=n_rows, n_columns=matrix.shape[1])

    def __len__(self) -> int:
        return self.n_rows

    @property
    def in_memory(self) -> bool:
        return self.array is not None

    def _matrix(self) -> np.ndarray:
        if self.array is not None:
            return self.array
        try:
            return np.load(self.path, mmap_mode="r")
        except FileNotFoundError:  # e.g. a Dask worker on a host without the project's folder
            raise MissingFileError(
                f"{self.path} is missing on {socket.gethostname()}: on a cluster every worker reads the "
                "features file at the driver's path (put the project on a filesystem every worker mounts there)"
            ) from None

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows ``start:stop`` (in selection order) as a C-contiguous float32/float64 array."""
        stop = self.n_rows if stop is None else stop
        matrix = self._matrix()
        block = matrix[start:stop] if self.rows is None else matrix[self.rows[start:stop]]
        return _contiguous(block)

    def take(self, positions: np.ndarray) -> np.ndarray:
        """The rows at ``positions`` (in selection order)."""
        positions = np.asarray(positions, dtype=np.int64)
        matrix = self._matrix()
        return _contiguous(matrix[positions if self.rows is None else self.rows[positions]])

    def subset(self, positions: np.ndarray) -> FeatureRows:
        """The rows at ``positions`` as a FeatureRows of their own (e.g. the items left to pick)."""
        positions = np.asarray(positions, dtype=np.int64)
        rows = positions if self.rows is None else self.rows[positions]
        return FeatureRows(self.path, rows, len(rows), self.n_columns, self.array)

    def shard(self, start: int, stop: int) -> FeatureRows:
        """Rows ``start:stop`` as a FeatureRows that is cheap to send to a worker."""
        if self.array is not None:
            rows = np.arange(start, stop) if self.rows is None else self.rows[start:stop]
            return FeatureRows(None, rows, stop - start, self.n_columns, self.array)
        rows = np.arange(start, stop) if self.rows is None else self.rows[start:stop]
        return FeatureRows(self.path, rows, stop - start, self.n_columns)

    def materialize(self) -> np.ndarray:
        """Every row in memory (for the steps that run in the driver process)."""
        return self.read()

    def __getstate__(self) -> dict[str, Any]:
        if self.array is not None:
            raise InvalidInputError(
                "features held in this process cannot be sent to a Dask cluster: pass a .npy file every worker "
                "can read (FeatureRows.of_file(path, rows))"
            )
        return {name: getattr(self, name) for name in ("path", "rows", "n_rows", "n_columns", "array")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            object.__setattr__(self, name, value)


def _as_rows(rows: Any) -> np.ndarray | None:
    return None if rows is None else np.ascontiguousarray(rows, dtype=np.int64)


def _contiguous(block: np.ndarray) -> np.ndarray:
    dtype = np.float64 if block.dtype == np.float64 else np.float32
    return np.ascontiguousarray(block, dtype=dtype)


def shard_bounds(n_rows: int, bytes_per_row: int) -> list[tuple[int, int]]:
    """Consecutive (start, stop) row ranges covering ``n_rows``: at most ``SHARD_BYTES`` of working
    set each, and at least ``MAX_SHARDS_PER_POOL`` shards once the pool has the rows for them.

    A function of the pool's shape alone: the same pool is cut the same way on any cluster.
    """
    by_memory = max(MIN_SHARD_ROWS, SHARD_BYTES // max(1, bytes_per_row))
    by_count = max(MIN_SHARD_ROWS, math.ceil(n_rows / MAX_SHARDS_PER_POOL))
    rows = min(by_memory, by_count)
    return [(start, min(n_rows, start + rows)) for start in range(0, n_rows, rows)]


def as_source(features: FeatureRows | np.ndarray) -> FeatureRows:
    """A validated matrix (or rows already) as the FeatureRows the sharded steps read."""
    return features if isinstance(features, FeatureRows) else FeatureRows.of_array(np.asarray(features))

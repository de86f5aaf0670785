"""Where a stage's heavy work runs: the configured Dask scheduler (or this process), and the shard
cache every worker reaches."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bilaf.compute import EMBEDDING_CACHE_ENV, Compute, open_compute
from bilaf.config import Params
from bilaf.stages.paths import ProjectPaths


@contextlib.contextmanager
def stage_compute(params: Params, root: Path | None = None) -> Iterator[Compute]:
    """The Compute of `compute.scheduler` (or $BILAF_DASK_SCHEDULER) for one stage of the project
    in ``root`` (where a relative scheduler file is found)."""
    compute = open_compute(params.compute.scheduler, root)
    try:
        yield compute
    finally:
        compute.close()


def check_compute(paths: ProjectPaths, params: Params) -> None:
    """Reach the configured Dask scheduler before any work (one line naming it if it is down)."""
    with stage_compute(params, paths.root):
        pass


def embedding_cache(paths: ProjectPaths, params: Params) -> str:
    """Where embedding shards are cached: $BILAF_EMBEDDING_CACHE, `compute.embedding_cache`, or the
    project's `.cache/embeddings` (a folder or an fsspec URL every worker reaches)."""
    configured = os.environ.get(EMBEDDING_CACHE_ENV) or params.compute.embedding_cache
    if not configured:
        return str(paths.embedding_cache)
    return configured if "://" in configured else str(paths.root / configured)


def compute_metadata(compute: Compute) -> dict[str, Any]:
    """Where the work ran, for the run log and the asset metadata (never lineage)."""
    return {f"compute_{key}": value for key, value in compute.describe().items()}

"""The `embeddings` stage: frozen-backbone features of every pool item (new items only computed)."""

from __future__ import annotations

import dataclasses
from typing import Any

from bilaf.config import Params
from bilaf.stages.compute import compute_metadata, embedding_cache, stage_compute
from bilaf.stages.paths import ProjectPaths, pool_unreadable
from bilaf.stages.table import StageOutcome


def run_embeddings(paths: ProjectPaths, params: Params) -> StageOutcome:
    from bilaf.features import embed_pool

    section = params.features
    with stage_compute(params, paths.root) as compute:
        info = embed_pool(
            paths.data,
            paths.output("embeddings"),
            backbone=section.backbone,
            weights=section.weights,
            image_size=section.image_size,
            batch_size=section.batch_size,
            cache_dir=embedding_cache(paths, params),
            compute=compute,
        )
        where = compute_metadata(compute)
    unreadable = pool_unreadable(paths)
    processes = sorted({f"{shard.host}:{shard.pid}" for shard in info.shards})
    return StageOutcome(
        metrics={
            **_numeric({key: value for key, value in dataclasses.asdict(info).items() if key != "shards"}),
            "pool_unreadable_files": len(unreadable),
        },
        metadata={
            "backbone": section.backbone,
            "weights": section.weights,
            **where,
            **({"shards_computed": len(info.shards), "computed_by": ", ".join(processes)} if info.shards else {}),
        },
    )


def _numeric(values: dict[str, Any]) -> dict[str, float]:
    return {
        key: float(value)
        for key, value in values.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }

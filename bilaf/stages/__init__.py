"""The pipeline's stages as plain functions: read inputs from the project folder, compute, write
outputs atomically. Dagster assets and DVC stages (`bilaf stage NAME`) both call these, so both
produce the same artifacts byte for byte given the same inputs.

Two sources feed the stages: the pool (`data/`, grown by `bilaf ingest` and by syncing the
configured source) and the labels (`labels/`, written by `bilaf labels import`). Every run belongs
to the open annotation round (`bilaf.rounds`): the `round` stage freezes the previous
round when the sources changed, and the selection stages spend `boundary.budget` on items that are
neither labeled nor pending.

The modules: `table` (the stages, standard library only), `paths`, `sources` (the pool, the
pre-run budget check), `labels`, `state` (what the open round knows), `compute` (where heavy
work runs), and one runner module per kind of stage (`open_round`, `embeddings`, `selection`, `batch`,
`training`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from bilaf.errors import InvalidInputError
from bilaf.stages.table import SOURCE_PATHS, STAGES, StageOutcome, StageSpec, lineage_params

if TYPE_CHECKING:
    from bilaf.config import Params

__all__ = ["SOURCE_PATHS", "STAGES", "StageOutcome", "StageSpec", "lineage_params", "run_stage"]


def run_stage(name: str, root: Path, params: Params | None = None) -> StageOutcome:
    """Run one stage in project folder `root` (parameters from its params.yaml unless given)."""
    from bilaf.config import load_params
    from bilaf.stages.paths import ProjectPaths

    if name not in STAGES:
        raise InvalidInputError(f"unknown stage {name!r} (known: {list(STAGES)})")
    paths = ProjectPaths(Path(root).resolve())
    params = params or load_params(paths.params)
    started = time.perf_counter()
    outcome = STAGES[name].run(paths, params)
    outcome.metrics["seconds"] = round(time.perf_counter() - started, 3)
    return outcome

"""The table of the pipeline's stages: the one place a stage is defined.

Each row says what a stage reads (its params sections, the upstream stages' outputs, the
sources), what it writes, which group it belongs to, the function that runs it and the code that
function runs (its code version). The Dagster assets, `dvc.yaml` (rendered from this table by
`bilaf dvc-yaml`), the command line's choices, the rounds' frozen files and the lineage all read
it. Standard library only, so the command line builds its parser from it without loading numpy,
pandas or Dagster.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bilaf.config import Params
    from bilaf.stages.paths import ProjectPaths

PACKAGE_DIR = Path(__file__).resolve().parents[1]
SOURCE_PATHS = {"pool": "data", "labels": "labels"}
# The glue every stage runs through: run_stage, the project's paths, atomic outputs, the rounds
# ledger and progress lines. A stage's own runner module and what it calls are listed in its row.
STAGE_GLUE = ("stages/__init__.py", "stages/paths.py", "artifacts.py", "rounds.py", "progress.py")


@dataclasses.dataclass
class StageOutcome:
    """What a stage reports: numbers (MLflow metrics, Dagster metadata), text, and the pictures shown
    in Dagster's metadata (MLflow gets the whole output)."""

    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    plots: list[Path] = dataclasses.field(default_factory=list)


Runner = Callable[["ProjectPaths", "Params"], StageOutcome]


@dataclasses.dataclass(frozen=True, kw_only=True)
class StageSpec:
    """One stage: what it reads (params sections, upstream stages, sources), what it writes, the
    function that runs it (``runner``: "module:function" under bilaf.stages) and the code that
    function runs (files or packages under bilaf/ whose content is its code version)."""

    name: str
    description: str
    group: str
    params: tuple[str, ...] = ()
    upstream: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    output: str
    runner: str
    code: tuple[str, ...]
    persist: bool = False  # the output accumulates across runs (DVC `persist: true`)
    registers_model: bool = False  # the output is a model checkpoint, registered in MLflow when trained

    @property
    def module(self) -> str:
        """The runner's module, relative to bilaf/ (part of the stage's code)."""
        return f"stages/{self.runner.partition(':')[0]}.py"

    @property
    def run(self) -> Runner:
        """The function that runs the stage (imported on first use: it loads the stage's libraries)."""
        module, _, function = self.runner.partition(":")
        return getattr(importlib.import_module(f"bilaf.stages.{module}"), function)

    @property
    def code_paths(self) -> tuple[str, ...]:
        """The code the stage runs, relative to bilaf/: the shared glue, its runner and what it calls."""
        return (*STAGE_GLUE, self.module, *self.code)

    def code_version(self) -> str:
        """sha256 (16 hex) of the stage's code files: a code change makes the stage stale."""
        digest = hashlib.sha256()
        for file in code_files(self.code_paths):
            digest.update(file.relative_to(PACKAGE_DIR).as_posix().encode() + b"\0" + file.read_bytes())
        return digest.hexdigest()[:16]


def code_files(paths: tuple[str, ...]) -> list[Path]:
    """The Python files of ``paths`` (files or packages under bilaf/), sorted."""
    found: set[Path] = set()
    for relative in paths:
        path = PACKAGE_DIR / relative
        found.update([path] if path.is_file() else path.rglob("*.py"))
    return sorted(found)


_SELECTION_CODE = ("stages/compute.py", "stages/sources.py", "stages/state.py", "selection", "features", "plots.py")
_TRAINING_CODE = ("stages/sources.py", "training", "features")

_TABLE = (
    StageSpec(
        name="round",
        description="The annotation round: earlier rounds frozen when the pool or labels changed; what is "
        "labeled and what is pending.",
        group="rounds",
        params=("annotation",),
        sources=("pool", "labels"),
        output="rounds",
        runner="open_round:run_round",
        code=("stages/labels.py", "stages/sources.py", "annotation", "features"),
        persist=True,
    ),
    StageSpec(
        name="embeddings",
        description="Frozen-backbone features of every pool item, keyed by item id (new items only are computed).",
        group="selection",
        params=("data", "features"),
        sources=("pool",),
        output="artifacts/embeddings",
        runner="embeddings:run_embeddings",
        code=("stages/compute.py", "features"),
    ),
    StageSpec(
        name="core_centers",
        description="Coverage picks of the round (ActiveFT by default): BiLAF's cores, with every labeled and "
        "pending item as a fixed anchor.",
        group="selection",
        params=("core", "later_rounds"),
        upstream=("embeddings", "round"),
        output="artifacts/core_centers.json",
        runner="selection:run_core_centers",
        code=_SELECTION_CODE,
    ),
    StageSpec(
        name="denoised_pool",
        description="Clusters (round 1: around the cores; later rounds: the classes of the labels) with their "
        "peripheral items removed by IDC.",
        group="selection",
        params=("denoise",),
        upstream=("embeddings", "round", "core_centers"),
        output="artifacts/denoised_pool.json",
        runner="selection:run_denoised_pool",
        code=_SELECTION_CODE,
    ),
    StageSpec(
        name="boundary_set",
        description="The round's selection: cores plus boundary picks, with per-pick provenance.",
        group="selection",
        params=("boundary",),
        upstream=("embeddings", "round", "core_centers", "denoised_pool"),
        output="artifacts/boundary_set",
        runner="selection:run_boundary_set",
        code=_SELECTION_CODE,
    ),
    StageSpec(
        name="annotation_batch",
        description="The round's batch for annotators (CSV, Label Studio tasks) and the labels training uses.",
        group="selection",
        upstream=("boundary_set", "round"),
        sources=("pool",),
        output="artifacts/annotation_batch",
        runner="batch:run_annotation_batch",
        code=("stages/labels.py", "stages/sources.py", "stages/state.py", "annotation", "features"),
    ),
    StageSpec(
        name="finetuned_model",
        description="The backbone finetuned on every label so far.",
        group="training",
        params=("features", "finetune"),
        upstream=("annotation_batch",),
        sources=("pool",),
        output="artifacts/finetuned_model",
        runner="training:run_finetuned_model",
        code=_TRAINING_CODE,
        registers_model=True,
    ),
    StageSpec(
        name="evaluation",
        description="Test-split accuracy of the finetuned model, a linear probe and kNN.",
        group="training",
        params=("evaluation",),
        upstream=("finetuned_model", "embeddings", "annotation_batch"),
        sources=("pool",),
        output="artifacts/evaluation",
        runner="training:run_evaluation",
        code=_TRAINING_CODE,
    ),
)
STAGES: dict[str, StageSpec] = {spec.name: spec for spec in _TABLE}


def lineage_params(name: str) -> tuple[str, ...]:
    """The params sections behind a stage's output: its own and every ancestor's, in params.yaml's
    order. What MLflow records for a stage's run (and `bilaf explain` reads); a stage *depends* on
    its own sections only (`StageSpec.params`): an ancestor's change reaches it as a new version of
    its input, or not at all when that input's bytes stayed the same."""
    from bilaf.config import Params

    sections = set(STAGES[name].params)
    for upstream in STAGES[name].upstream:
        sections.update(lineage_params(upstream))
    return tuple(section for section in Params.section_names() if section in sections)


def dvc_stages() -> dict[str, dict[str, Any]]:
    """The `stages:` of dvc.yaml: each stage run by `bilaf stage NAME`, with its upstream outputs, its
    sources and its code as deps, its own params sections, and its output."""
    return {
        name: {
            "cmd": f"bilaf stage {name}",
            "deps": [
                *(STAGES[upstream].output for upstream in spec.upstream),
                *(SOURCE_PATHS[source] for source in spec.sources),
                *(f"bilaf/{path}" for path in spec.code_paths),
            ],
            "params": list(spec.params),
            "outs": [{spec.output: {"persist": True}} if spec.persist else spec.output],
        }
        for name, spec in STAGES.items()
    }

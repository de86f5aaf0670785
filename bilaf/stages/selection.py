"""The selection stages (`core_centers`, `denoised_pool`, `boundary_set`): the round's picks from the
train pool's embeddings, one-shot in round 1 and label-aware once labels of two classes exist."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bilaf import artifacts, rounds
from bilaf.config import Params
from bilaf.errors import InvalidInputError
from bilaf.stages.compute import compute_metadata, stage_compute
from bilaf.stages.paths import ProjectPaths
from bilaf.stages.sources import pool_classes
from bilaf.stages.state import RoundKnowledge
from bilaf.stages.table import StageOutcome

if TYPE_CHECKING:
    from bilaf.selection.shards import FeatureRows


def run_core_centers(paths: ProjectPaths, params: Params) -> StageOutcome:
    from bilaf.selection import select_cores
    from bilaf.selection.strategy import ONE_SHOT

    pool, known = TrainPool.load(paths), RoundKnowledge.load(paths)
    labels, pending = pool.label_rows(known)
    strategy = round_strategy(params, len(pool.ids), labels, pending)
    n_cores = {ONE_SHOT: params.core.n_cores, "bilaf": params.later_rounds.n_cores}.get(strategy, 0)
    payload: dict[str, Any] = {"round": known.round, "strategy": strategy}
    where: dict[str, Any] = {}
    if n_cores:
        with stage_compute(params, paths.root) as compute:
            cores = select_cores(
                pool.source,
                n_cores,
                method=params.core.method,
                seed=params.core.seed,
                labels=labels,
                pending=pending,
                compute=compute,
            )
            where = compute_metadata(compute)
        payload.update(cores=cores.to_dict(), core_ids=pool.ids_at(cores.indices))
    else:
        payload.update(cores=None, core_ids=[], skipped=_skipped(strategy))
    with artifacts.atomic_output(paths.output("core_centers")) as out:
        artifacts.write_json(out, payload)
    return StageOutcome(
        metrics={"n_cores": len(payload["core_ids"]), "pool_size": len(pool.ids)},
        metadata={"round": known.round, "strategy": strategy, **where},
    )


def run_denoised_pool(paths: ProjectPaths, params: Params) -> StageOutcome:
    from bilaf.selection import class_regions, denoise
    from bilaf.selection.strategy import ONE_SHOT, free_items

    pool, known = TrainPool.load(paths), RoundKnowledge.load(paths)
    labels, pending = pool.label_rows(known)
    strategy = round_strategy(params, len(pool.ids), labels, pending)
    section = params.denoise
    idc = {
        "n_neighbors": section.n_neighbors,
        "ring_fraction": section.ring_fraction,
        "removal_ratio": section.removal_ratio,
    }
    cores = _core_rows(paths, pool)
    payload: dict[str, Any] = {"round": known.round, "strategy": strategy}
    where: dict[str, Any] = {}
    if strategy == ONE_SHOT:
        free = free_items(len(pool.ids), labels, pending)
        with stage_compute(params, paths.root) as compute:
            denoised = denoise(
                pool.source.subset(free), _positions(free, cores), variant=section.variant, compute=compute, **idc
            )
            where = compute_metadata(compute)
        payload.update(denoised=denoised.to_dict(), ids=pool.ids_at(free))
        kept = int(np.count_nonzero(denoised.kept))
    elif strategy == "bilaf":
        regions = class_regions(pool.features, labels, pending=pending, cores=cores, **idc)
        payload.update(regions=regions.to_dict(), ids=pool.ids, classes=pool.class_names)
        kept = int(np.count_nonzero(regions.kept))
    else:
        payload.update(skipped=_skipped(strategy))
        kept = len(pool.ids)
    with artifacts.atomic_output(paths.output("denoised_pool")) as out:
        artifacts.write_json(out, payload)
    return StageOutcome(
        metrics={"pool_size": len(pool.ids), "kept": kept, "removed": len(pool.ids) - kept},
        metadata={"round": known.round, "strategy": strategy, **where},
    )


def run_boundary_set(paths: ProjectPaths, params: Params) -> StageOutcome:
    from bilaf.plots import plot_selection_projection
    from bilaf.selection import (
        ClassRegions,
        CoreSelection,
        DenoisedPool,
        select,
        select_boundary,
        select_class_boundary,
    )
    from bilaf.selection.strategy import ONE_SHOT, free_items

    pool, known = TrainPool.load(paths), RoundKnowledge.load(paths)
    labels, pending = pool.label_rows(known)
    strategy = round_strategy(params, len(pool.ids), labels, pending)
    denoised = artifacts.read_json(paths.output("denoised_pool"))
    budget, penalty = params.boundary.budget, params.boundary.penalty
    kept = None
    where: dict[str, Any] = {}
    if strategy == ONE_SHOT:
        free = free_items(len(pool.ids), labels, pending)
        core_rows = _core_rows(paths, pool)
        cores = dataclasses.replace(
            CoreSelection.from_dict(artifacts.read_json(paths.output("core_centers"))["cores"]),
            indices=_positions(free, core_rows),
        )
        stage_two = DenoisedPool.from_dict(denoised["denoised"])
        with stage_compute(params, paths.root) as compute:
            local = select_boundary(
                pool.source.subset(free), cores, stage_two, budget, penalty=penalty, compute=compute
            )
            where = compute_metadata(compute)
        result = local.on_rows(free)
        kept = np.zeros(len(pool.ids), dtype=bool)
        kept[free[stage_two.kept]] = True
    elif strategy == "bilaf":
        regions = ClassRegions.from_dict(denoised["regions"])
        result = select_class_boundary(pool.features, regions, budget, penalty=penalty)
        kept = regions.kept
    else:
        with stage_compute(params, paths.root) as compute:
            result = select(
                pool.source, budget, strategy, labels=labels, pending=pending, seed=params.core.seed, compute=compute
            )
            where = compute_metadata(compute)
    records = selection_records(result, pool, known.round)
    with artifacts.atomic_output(paths.output("boundary_set")) as out:
        out.mkdir()
        artifacts.write_csv(out / "selection.csv", records, SELECTION_COLUMNS)
        artifacts.write_json(
            out / "selection.json",
            {
                "round": known.round,
                "strategy": strategy,
                "selection": result.to_dict(),
                "ids": pool.ids_at(result.indices),
            },
        )
        artifacts.write_json(out / rounds.ROUND_MARKER, {"round": known.round})
        plot_selection_projection(pool.source, result.core_indices, kept, result, out / "projection.png")
    final = paths.output("boundary_set")
    roles = [record["role"] for record in records]
    return StageOutcome(
        metrics={
            "selected": len(records),
            "cores": roles.count("core"),
            "boundary": roles.count("boundary"),
            "unique": len({record["id"] for record in records}),
            "round": known.round,
        },
        metadata={"round": known.round, "strategy": strategy, **where},
        plots=[final / "projection.png"],
    )


def round_strategy(params: Params, n_items: int, labels: np.ndarray, pending: np.ndarray) -> str:
    """What this round runs, by the library's rule (`bilaf.selection.strategy`): "one-shot" BiLAF
    (round 1, or no labels of 2+ classes yet: the core, denoise and boundary sections, around the
    labeled and pending items) or `later_rounds.method` once there are. ``labels``/``pending``:
    `TrainPool.label_rows`."""
    from bilaf.selection.strategy import round_strategy as library_strategy

    return library_strategy(n_items, labels, pending, method=params.later_rounds.method)


def _skipped(strategy: str) -> str:
    """Why a stage has nothing to do in a round of ``strategy`` (the stage's output says so)."""
    if strategy == "bilaf":
        return "no coverage cores this round (later_rounds.n_cores = 0)"
    return f"later_rounds.method {strategy} picks the whole round in boundary_set"


@dataclasses.dataclass(frozen=True)
class TrainPool:
    """The train split's embeddings in id order: what selection runs on (rows index these arrays).

    Sorting by id makes the picks depend on the pool's content, not on the order files were found.
    """

    ids: list[str]
    paths: list[str]
    features_file: Path
    rows: np.ndarray  # the train rows of features.npy, in id order
    class_names: list[str]

    @functools.cached_property
    def row_of(self) -> dict[str, int]:
        return {item: row for row, item in enumerate(self.ids)}

    @property
    def source(self) -> FeatureRows:
        """The train features as the selection reads them: from features.npy, shard by shard, where
        the Compute runs its tasks."""
        from bilaf.selection.shards import FeatureRows

        return FeatureRows.of_file(self.features_file, self.rows)

    @functools.cached_property
    def features(self) -> np.ndarray:
        """The train features in this process (for the steps that run here)."""
        return self.source.materialize()

    @classmethod
    def load(cls, paths: ProjectPaths) -> TrainPool:
        from bilaf.features import load_embeddings, read_manifest

        embeddings = load_embeddings(paths.output("embeddings"))
        manifest = read_manifest(paths.data)
        path_of = dict(zip(manifest["id"], manifest["path"]))
        train = np.flatnonzero(np.asarray(embeddings.splits) == "train")
        if train.size == 0:
            raise InvalidInputError("the pool has no train-split items to select from")
        train = train[np.argsort(np.asarray(embeddings.ids)[train], kind="stable")]
        ids = [str(embeddings.ids[i]) for i in train]
        return cls(
            ids=ids,
            paths=[path_of[item] for item in ids],
            class_names=pool_classes(manifest),
            features_file=paths.output("embeddings") / "features.npy",
            rows=train,
        )

    def label_rows(self, known: RoundKnowledge) -> tuple[np.ndarray, np.ndarray]:
        """(class index per train row, -1 = unlabeled; pending rows) for the selection engine."""
        index_of = {name: index for index, name in enumerate(self.class_names)}
        labels = np.full(len(self.ids), -1, dtype=np.int64)
        for item, name in known.labeled.items():
            if item in self.row_of:
                labels[self.row_of[item]] = index_of[name]
        pending = np.array(sorted(self.row_of[item] for item in known.pending if item in self.row_of), dtype=np.int64)
        return labels, pending

    def ids_at(self, positions: Any) -> list[str]:
        return [self.ids[int(position)] for position in positions]


def _core_rows(paths: ProjectPaths, pool: TrainPool) -> np.ndarray:
    core_ids = artifacts.read_json(paths.output("core_centers"))["core_ids"]
    return np.array(sorted(pool.row_of[item] for item in core_ids), dtype=np.int64)


def _positions(rows: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Positions of ``wanted`` rows inside the ascending ``rows``."""
    return np.searchsorted(rows, wanted).astype(np.int64)


SELECTION_COLUMNS = (
    "rank",
    "id",
    "path",
    "role",
    "cluster_core",
    "rival_core",
    "predicted_class",
    "rival_class",
    "boundary_score",
    "penalty_factor",
    "margin",
    "round",
)


def selection_records(result, pool: TrainPool, round_number: int) -> list[dict[str, Any]]:
    """One row per pick, every reference an item id or a class name (never a row position)."""
    cluster_core = {stats.cluster: pool.ids[stats.core_index] for stats in result.clusters}

    def name(index: int | None) -> str | None:
        return None if index is None else pool.class_names[index]

    return [
        {
            "rank": pick.rank,
            "id": pool.ids[pick.index],
            "path": pool.paths[pick.index],
            "role": pick.role,
            "cluster_core": cluster_core.get(pick.cluster),
            "rival_core": None if pick.rival_center is None else pool.ids[pick.rival_center],
            "predicted_class": name(pick.predicted_class),
            "rival_class": name(pick.rival_class),
            "boundary_score": pick.boundary_score,
            "penalty_factor": pick.penalty_factor,
            "margin": pick.margin,
            "round": round_number,
        }
        for pick in result.picks
    ]

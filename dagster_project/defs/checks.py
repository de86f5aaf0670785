"""Blocking asset checks: a failed check stops the assets downstream of it."""

import dagster as dg
import numpy as np
import pandas as pd

from bilaf import artifacts
from dagster_project.defs.resources import ProjectResource


@dg.asset_check(asset="embeddings", blocking=True, description="Every pool item has exactly one finite embedding row.")
def embeddings_complete_and_finite(project: ProjectResource) -> dg.AssetCheckResult:
    from bilaf.features import load_embeddings, read_manifest

    embeddings = load_embeddings(project.paths.output("embeddings"))
    manifest_ids = set(read_manifest(project.paths.data)["id"])
    features = np.asarray(embeddings.features)
    non_finite_rows = int(np.count_nonzero(~np.isfinite(features).all(axis=1)))
    ids = list(embeddings.ids)
    missing = len(manifest_ids - set(ids))
    duplicated = len(ids) - len(set(ids))
    return dg.AssetCheckResult(
        passed=non_finite_rows == 0 and missing == 0 and duplicated == 0 and len(ids) == len(manifest_ids),
        metadata={
            "rows": len(ids),
            "pool_items": len(manifest_ids),
            "non_finite_rows": non_finite_rows,
            "pool_items_without_embedding": missing,
            "duplicated_ids": duplicated,
        },
    )


@dg.asset_check(
    asset="embeddings",
    description="Every file of the pool's sources could be read (warns, with "
    "the files and reasons, when some were skipped).",
)
def pool_files_are_readable(project: ProjectResource) -> dg.AssetCheckResult:
    from bilaf.stages.paths import pool_unreadable

    unreadable = pool_unreadable(project.paths)
    return dg.AssetCheckResult(
        passed=not unreadable,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "unreadable": len(unreadable),
            "examples": "; ".join(f"{entry['origin']}: {entry['reason']}" for entry in unreadable[:5]),
        },
    )


def _selection(project: ProjectResource) -> pd.DataFrame:
    return pd.read_csv(project.paths.output("boundary_set") / "selection.csv", dtype={"id": str})


@dg.asset_check(asset="boundary_set", blocking=True, description="The selection holds exactly the budget.")
def selection_size_equals_budget(project: ProjectResource) -> dg.AssetCheckResult:
    size, budget = len(_selection(project)), project.params().boundary.budget
    return dg.AssetCheckResult(passed=size == budget, metadata={"selected": size, "budget": budget})


@dg.asset_check(
    asset="boundary_set",
    blocking=True,
    description="No item is selected twice (the repo variant's documented duplicates only warn).",
)
def selection_has_no_duplicates(project: ProjectResource) -> dg.AssetCheckResult:
    ids = _selection(project)["id"]
    duplicates = sorted(set(ids[ids.duplicated()]))
    repo_variant = project.params().denoise.variant == "repo"
    return dg.AssetCheckResult(
        passed=not duplicates,
        severity=dg.AssetCheckSeverity.WARN if repo_variant else dg.AssetCheckSeverity.ERROR,
        metadata={"duplicates": len(duplicates), "examples": ", ".join(duplicates[:5])},
    )


@dg.asset_check(asset="boundary_set", blocking=True, description="Every selected id exists in the pool.")
def selection_ids_exist_in_pool(project: ProjectResource) -> dg.AssetCheckResult:
    from bilaf.features import read_manifest

    manifest = read_manifest(project.paths.data)
    train_ids = set(manifest.loc[manifest["split"] == "train", "id"])
    unknown = sorted(set(_selection(project)["id"]) - train_ids)
    return dg.AssetCheckResult(
        passed=not unknown, metadata={"unknown_ids": len(unknown), "examples": ", ".join(unknown[:5])}
    )


@dg.asset_check(asset="boundary_set", blocking=True, description="Every core sample is in the selection.")
def selection_includes_every_core(project: ProjectResource) -> dg.AssetCheckResult:
    core_ids = set(artifacts.read_json(project.paths.output("core_centers"))["core_ids"])
    missing = sorted(core_ids - set(_selection(project)["id"]))
    return dg.AssetCheckResult(passed=not missing, metadata={"cores": len(core_ids), "missing_cores": len(missing)})


@dg.asset_check(
    asset="boundary_set",
    blocking=True,
    description="No pick was labeled already or is pending from an earlier round (docs/rounds.md "
    "invariant 1: a label paid for is never asked for again, a pending item never sent twice).",
)
def selection_avoids_labeled_and_pending(project: ProjectResource) -> dg.AssetCheckResult:
    from bilaf.stages.state import RoundKnowledge

    known = RoundKnowledge.load(project.paths)
    picked = set(_selection(project)["id"])
    labeled, pending = sorted(picked & set(known.labeled)), sorted(picked & set(known.pending))
    return dg.AssetCheckResult(
        passed=not labeled and not pending,
        metadata={
            "round": known.round,
            "labeled_picked": len(labeled),
            "pending_picked": len(pending),
            "examples": ", ".join([*labeled, *pending][:5]),
        },
    )


ASSET_CHECKS = [
    embeddings_complete_and_finite,
    pool_files_are_readable,
    selection_size_equals_budget,
    selection_has_no_duplicates,
    selection_ids_exist_in_pool,
    selection_includes_every_core,
    selection_avoids_labeled_and_pending,
]

"""The blocking asset checks on boundary_set: a failed check stops the assets downstream of it.

The stage assets are stand-ins with the real keys that write a chosen selection; the checks are the
project's own (dagster_project.defs.checks), run by Dagster in one in-process run.
"""

import copy

import dagster as dg
import pytest
from pipeline.conftest import TINY_PARAMS, write_params

from dagster_project.defs.checks import ASSET_CHECKS, selection_has_no_duplicates, selection_size_equals_budget
from dagster_project.defs.resources import ProjectResource

BUDGET = TINY_PARAMS["boundary"]["budget"]


def _run(root, selected_ids: list[str]) -> tuple[dg.ExecuteInProcessResult, list[str]]:
    """Materialize a stand-in boundary_set holding ``selected_ids``, its two selection checks and
    a stand-in annotation_batch downstream; returns the result and what the downstream body saw."""
    downstream_ran: list[str] = []

    @dg.asset(name="boundary_set")
    def boundary_set(project: ProjectResource) -> None:
        out = project.paths.output("boundary_set")
        out.mkdir(parents=True, exist_ok=True)
        (out / "selection.csv").write_text("id,role\n" + "".join(f"{item},boundary\n" for item in selected_ids))

    @dg.asset(name="annotation_batch", deps=[boundary_set])
    def annotation_batch() -> None:
        downstream_ran.append("annotation_batch")

    result = dg.materialize(
        [boundary_set, annotation_batch, selection_size_equals_budget, selection_has_no_duplicates],
        resources={"project": ProjectResource(root=str(root))},
        raise_on_error=False,
    )
    return result, downstream_ran


def _checks(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {evaluation.check_name: evaluation for evaluation in result.get_asset_check_evaluations()}


def _materialized(result: dg.ExecuteInProcessResult) -> set[str]:
    return {event.asset_key.to_user_string() for event in result.get_asset_materialization_events()}


def test_every_check_but_the_unreadable_files_warning_is_blocking():
    specs = [spec for check in ASSET_CHECKS for spec in check.check_specs]
    assert {spec.name for spec in specs if not spec.blocking} == {"pool_files_are_readable"}
    assert {spec.asset_key.to_user_string() for spec in specs if spec.blocking} == {"embeddings", "boundary_set"}


def test_a_selection_of_the_budget_passes_and_the_downstream_asset_runs(project_dir):
    result, downstream_ran = _run(project_dir, [f"{n:016x}" for n in range(BUDGET)])
    assert result.success
    checks = _checks(result)
    assert checks["selection_size_equals_budget"].passed and checks["selection_has_no_duplicates"].passed
    assert downstream_ran == ["annotation_batch"] and _materialized(result) == {"boundary_set", "annotation_batch"}


def test_a_selection_short_of_the_budget_fails_its_check_and_stops_the_downstream_asset(project_dir):
    result, downstream_ran = _run(project_dir, [f"{n:016x}" for n in range(BUDGET - 1)])
    assert not result.success
    failed = _checks(result)["selection_size_equals_budget"]
    assert not failed.passed and failed.severity == dg.AssetCheckSeverity.ERROR
    assert {key: value.value for key, value in failed.metadata.items()} == {"selected": BUDGET - 1, "budget": BUDGET}
    assert downstream_ran == [] and _materialized(result) == {"boundary_set"}
    (failure,) = result.get_step_failure_events()  # the check's step failed; nothing after it started
    assert "1 blocking asset check failed with ERROR severity" in failure.step_failure_data.error.message


@pytest.mark.parametrize(("variant", "blocks"), [("default", True), ("repo", False)])
def test_a_duplicated_pick_blocks_unless_the_repo_variant_documents_it(project_dir, variant, blocks):
    params = copy.deepcopy(TINY_PARAMS)
    params["denoise"]["variant"] = variant
    write_params(project_dir, params)
    ids = [f"{n:016x}" for n in range(BUDGET - 1)]
    result, downstream_ran = _run(project_dir, [*ids, ids[0]])
    duplicates = _checks(result)["selection_has_no_duplicates"]
    assert not duplicates.passed and duplicates.metadata["examples"].value == ids[0]
    assert duplicates.severity == (dg.AssetCheckSeverity.ERROR if blocks else dg.AssetCheckSeverity.WARN)
    assert _checks(result)["selection_size_equals_budget"].passed
    assert result.success is not blocks
    assert downstream_ran == ([] if blocks else ["annotation_batch"])

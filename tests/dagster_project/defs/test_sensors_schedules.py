"""The refresh sensor's skip reasons and run requests, and the nightly schedule's, evaluated with
Dagster's own contexts against a throwaway instance; what "already materialized" means is
recorded as the events a run would have left (no stage runs here)."""

import copy
import datetime
import subprocess
import sys

import dagster as dg
import pytest
from pipeline.conftest import TINY_PARAMS, free_port, write_params

from bilaf.config import Params, load_params
from bilaf.stages import STAGES
from bilaf.stages.paths import ProjectPaths
from dagster_project.definitions import build_definitions
from dagster_project.defs.keys import POOL_KEY, SOURCE_FINGERPRINT, params_key, source_key
from dagster_project.defs.planning import (
    CODE_VERSION_TAG,
    DATA_VERSION_TAG,
    INPUT_VERSION_TAG,
    configured_source_fingerprint,
    current_versions,
)
from dagster_project.defs.resources import ProjectResource
from dagster_project.defs.schedules import nightly_refresh
from dagster_project.defs.sensors import REFRESH_TAGS, RUN_KEY_TAG, refresh_sensor
from dagster_project.defs.tracking import PID_TAG, MlflowResource, process_tags

EVERY_SOURCE = {params_key(section) for section in Params.section_names()} | {POOL_KEY, source_key("labels")}
AFTER_BOUNDARY = ("boundary_set", "annotation_batch", "finetuned_model", "evaluation")


def _resources(root, mlflow_store: str) -> dict:
    return {
        "project": ProjectResource(root=str(root)),
        "mlflow": MlflowResource(root=str(root), tracking_uri=mlflow_store),
    }


def _sensor(instance, root, mlflow_store):
    # Used as a context manager, as Dagster's docs do with resources: an unclosed context leaves the
    # instance it opened as Dagster's current defs-state storage until garbage collection closes it,
    # and a later in-process run in this pytest process then loads definitions through a dead
    # instance ("Attempted to resolve undefined DagsterInstance weakref").
    with dg.build_sensor_context(instance=instance, resources=_resources(root, mlflow_store)) as context:
        return refresh_sensor(context)


def _schedule(instance, root, mlflow_store):
    with dg.build_schedule_context(
        instance=instance,
        resources=_resources(root, mlflow_store),
        scheduled_execution_time=datetime.datetime(2026, 1, 2, 2, 0, tzinfo=datetime.UTC),
    ) as context:  # closed here, for the reason in _sensor
        return nightly_refresh(context)


def _record_everything_as_current(instance: dg.DagsterInstance, root) -> None:
    """The events a finished run leaves: every source observed at its version now, every stage
    materialized with its code version and the versions of its inputs, its output on disk."""
    paths = ProjectPaths(root.resolve())
    params = load_params(paths.params)
    versions = current_versions(paths, params)
    for key, version in versions.items():
        instance.report_runless_asset_event(
            dg.AssetObservation(
                key,
                tags={} if version is None else {DATA_VERSION_TAG: version},
                metadata={SOURCE_FINGERPRINT: configured_source_fingerprint(params.data)} if key == POOL_KEY else {},
            )
        )
    for name, spec in STAGES.items():
        paths.output(name).mkdir(parents=True, exist_ok=True)
        tags = {DATA_VERSION_TAG: f"{name}-1", CODE_VERSION_TAG: spec.code_version()}
        tags.update({INPUT_VERSION_TAG.format(upstream): f"{upstream}-1" for upstream in spec.upstream})
        for key in [source_key(s) for s in spec.sources] + [params_key(s) for s in spec.params]:
            if versions[key] is not None:
                tags[INPUT_VERSION_TAG.format(key.to_user_string())] = versions[key]
        instance.report_runless_asset_event(dg.AssetMaterialization(name, tags=tags))


def test_the_sensor_and_schedule_are_declared_as_documented():
    defs = build_definitions("/nonexistent")
    dg.Definitions.validate_loadable(defs)
    assert {sensor.name for sensor in defs.sensors} >= {refresh_sensor.name} and list(defs.schedules) == [
        nightly_refresh
    ]
    assert refresh_sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert refresh_sensor.minimum_interval_seconds == 30
    assert nightly_refresh.cron_schedule == "0 2 * * *"
    assert nightly_refresh.default_status == dg.DefaultScheduleStatus.STOPPED


def test_invalid_params_are_a_skip_reason_not_a_run(project_dir, instance, mlflow_store):
    params = copy.deepcopy(TINY_PARAMS)
    params["boundary"]["budget"] = params["data"]["train_size"] + 1
    write_params(project_dir, params)
    for evaluate in (_sensor, _schedule):
        skip = evaluate(instance, project_dir, mlflow_store)
        assert isinstance(skip, dg.SkipReason), evaluate
        assert skip.skip_message.startswith("params.yaml is invalid, nothing launched:")
        assert "boundary.budget" in skip.skip_message


def test_a_new_project_gets_one_run_of_every_source_and_stage(project_dir, instance, mlflow_store):
    request = _sensor(instance, project_dir, mlflow_store)
    assert isinstance(request, dg.RunRequest)
    assert set(request.asset_selection) == EVERY_SOURCE | {dg.AssetKey(name) for name in STAGES}
    assert request.tags == {**REFRESH_TAGS, "bilaf/round": "1", "bilaf/stages": ",".join(STAGES)}
    again = _sensor(instance, project_dir, mlflow_store)  # the same inputs: the same run key, one run
    assert again.run_key == request.run_key
    nightly = _schedule(instance, project_dir, mlflow_store)  # the schedule asks for the very same run
    assert isinstance(nightly, dg.RunRequest)
    assert (nightly.run_key, set(nightly.asset_selection), nightly.tags) == (
        request.run_key,
        set(request.asset_selection),
        request.tags,
    )


@dg.op
def _noop() -> None:
    pass


@dg.job
def _another_run():
    """A run of another job, to stand for one in flight or one whose process was killed."""
    _noop()


def test_a_failed_run_is_retried_under_a_new_run_key_once_per_failure(project_dir, instance, mlflow_store):
    """The daemon launches a run key once, ever: after the run of these inputs failed, the same
    inputs must ask again under another key (and a succeeded run's key is asked for again as is)."""
    first = _sensor(instance, project_dir, mlflow_store)
    keys = [first.run_key]
    for _ in range(2):
        instance.create_run_for_job(_another_run, status=dg.DagsterRunStatus.FAILURE, tags={RUN_KEY_TAG: keys[-1]})
        retry = _sensor(instance, project_dir, mlflow_store)
        assert isinstance(retry, dg.RunRequest) and retry.run_key not in keys
        assert set(retry.asset_selection) == set(first.asset_selection)
        keys.append(retry.run_key)
    assert keys == [first.run_key, f"{first.run_key}-1", f"{first.run_key}-2"]


def test_a_team_service_that_is_down_is_a_skip_naming_it(project_dir, instance):
    address = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    skip = _sensor(instance, project_dir, address)
    assert isinstance(skip, dg.SkipReason)
    assert skip.skip_message == f"nothing launched: the MLflow server at {address} does not answer (`make team-status`)"


def test_an_edit_made_while_planning_is_observed_by_the_run_that_applies_it(
    project_dir, instance, mlflow_store, monkeypatch
):
    """params.yaml changes between `dvc status` and the rest of the plan (the sensor is evaluated
    while a user saves the file): a stage DVC calls stale must come with the observation of its
    params, or the run applies the edit without recording it and the next tick runs it again."""
    from dagster_project.defs import planning

    _record_everything_as_current(instance, project_dir)

    def dvc_status_then_an_edit(paths, *targets):
        params = copy.deepcopy(TINY_PARAMS)
        params["boundary"]["penalty"] = 1.3
        write_params(project_dir, params)
        return {"boundary_set": "params.yaml changed"}

    monkeypatch.setattr(planning, "dvc_changes", dvc_status_then_an_edit)
    request = _sensor(instance, project_dir, mlflow_store)
    assert isinstance(request, dg.RunRequest)
    assert params_key("boundary") in request.asset_selection
    assert {key.to_user_string() for key in request.asset_selection if key != params_key("boundary")} == set(
        AFTER_BOUNDARY
    )


def test_a_run_in_flight_holds_the_next_one_back(project_dir, instance, mlflow_store):
    running = instance.create_run_for_job(_another_run, status=dg.DagsterRunStatus.STARTED)
    skip = _sensor(instance, project_dir, mlflow_store)
    assert isinstance(skip, dg.SkipReason)
    assert skip.skip_message == f"run {running.run_id} is STARTED: waiting for it before planning the next one"
    instance.report_run_failed(running)
    assert isinstance(_sensor(instance, project_dir, mlflow_store), dg.RunRequest)


def test_a_killed_bilaf_run_is_closed_and_does_not_hold_the_next_one_back(project_dir, instance, mlflow_store):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    killed = instance.create_run_for_job(
        _another_run, status=dg.DagsterRunStatus.STARTED, tags={**process_tags(), PID_TAG: str(gone.pid)}
    )
    assert isinstance(_sensor(instance, project_dir, mlflow_store), dg.RunRequest)
    assert instance.get_run_by_id(killed.run_id).status == dg.DagsterRunStatus.FAILURE


def test_nothing_changed_is_a_skip_and_a_changed_section_reruns_exactly_its_stages(project_dir, instance, mlflow_store):
    _record_everything_as_current(instance, project_dir)
    for evaluate in (_sensor, _schedule):
        skip = evaluate(instance, project_dir, mlflow_store)
        assert isinstance(skip, dg.SkipReason), evaluate
        assert skip.skip_message == ("params.yaml, the pool, the labels and the code are unchanged since the last run")

    params = copy.deepcopy(TINY_PARAMS)
    params["boundary"]["penalty"] = 1.5
    write_params(project_dir, params)
    request = _sensor(instance, project_dir, mlflow_store)
    assert isinstance(request, dg.RunRequest)
    assert set(request.asset_selection) == {params_key("boundary")} | {dg.AssetKey(name) for name in AFTER_BOUNDARY}
    assert request.tags["bilaf/stages"] == ",".join(AFTER_BOUNDARY)


@pytest.mark.parametrize("gone", ["evaluation", "core_centers"])
def test_a_missing_output_reruns_its_stage_and_what_follows(project_dir, instance, mlflow_store, gone):
    _record_everything_as_current(instance, project_dir)
    ProjectPaths(project_dir.resolve()).output(gone).rmdir()
    request = _sensor(instance, project_dir, mlflow_store)
    assert isinstance(request, dg.RunRequest)
    order = list(STAGES)
    expected = {"evaluation"} if gone == "evaluation" else set(order[order.index("core_centers") :])
    assert set(request.asset_selection) == {dg.AssetKey(name) for name in expected}


def test_the_run_key_tag_is_the_one_dagster_writes():
    """RUN_KEY_TAG restates a private constant (no public one in Dagster 1.13): fail loudly if it moves."""
    from dagster._core.storage.tags import RUN_KEY_TAG as DAGSTERS

    assert RUN_KEY_TAG == DAGSTERS

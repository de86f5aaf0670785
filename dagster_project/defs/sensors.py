"""Sensor: one run for each change of params.yaml, the pool, the labels or the code.

The run key is the hash of every input version (not of the plan, which shrinks while a run
proceeds), so one change launches one run (again, under a new key, when that run failed); and
nothing is launched while a run of this project is queued or running, so no two runs write the same
artifacts.
"""

import logging
import os

import dagster as dg

from bilaf.errors import BilafError
from bilaf.stages.compute import check_compute
from bilaf.stages.sources import check_budget
from dagster_project.defs.planning import expected_round, plan_refresh, refresh_in_flight
from dagster_project.defs.resources import ProjectResource
from dagster_project.defs.tracking import MlflowResource, close_abandoned_runs
from dagster_project.team import check_services

REFRESH_TAGS = {"bilaf/trigger": "refresh"}
RUN_KEY_TAG = "dagster/run_key"  # the tag Dagster 1.13 gives a sensor's run (dagster._core.storage.tags)


def refresh_request(
    instance: dg.DagsterInstance,
    project: ProjectResource,
    mlflow: MlflowResource | None = None,
    log: logging.Logger | None = None,
) -> dg.RunRequest | dg.SkipReason:
    """A run of the changed sources' observations and the stages they make stale (what earlier runs
    left open is closed first and said in ``log``)."""
    try:
        params = project.params()
        check_budget(project.paths, params)
    except BilafError as error:
        return dg.SkipReason(f"params.yaml is invalid, nothing launched: {error}")
    try:
        check_compute(project.paths, params)
        if mlflow is not None:
            check_services(project.paths.root, mlflow.resolved_tracking_uri())
    except BilafError as error:
        return dg.SkipReason(f"nothing launched: {error}")
    if mlflow is not None:
        for line in close_abandoned_runs(instance, mlflow):  # a killed `bilaf run` must not block every later one
            if log is not None:
                log.warning(line)
    running = refresh_in_flight(instance)
    if running is not None:
        return dg.SkipReason(
            f"run {running.dagster_run.run_id} is {running.dagster_run.status.value}: "
            "waiting for it before planning the next one"
        )
    try:
        plan = plan_refresh(instance, project.paths, params)
    except BilafError as error:
        return dg.SkipReason(f"cannot plan a run: {error}")
    if not plan:
        return dg.SkipReason("params.yaml, the pool, the labels and the code are unchanged since the last run")
    # The daemon launches one run per run key, ever: a run of these inputs that failed (killed, a
    # service down) is retried under the next key, or the sensor would wait for the inputs to change.
    run_key, attempt = plan.inputs_key, 0
    while instance.get_runs_count(
        dg.RunsFilter(tags={RUN_KEY_TAG: run_key}, statuses=[dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED])
    ):
        attempt += 1
        run_key = f"{plan.inputs_key}-{attempt}"
    return dg.RunRequest(
        run_key=run_key,
        asset_selection=plan.asset_keys,
        tags={
            **REFRESH_TAGS,
            "bilaf/round": str(expected_round(project.paths, plan)),
            "bilaf/stages": ",".join(plan.stages),
        },
    )


@dg.sensor(
    minimum_interval_seconds=int(os.environ.get("BILAF_SENSOR_INTERVAL_S", "30")),
    default_status=dg.DefaultSensorStatus.RUNNING,
    asset_selection=dg.AssetSelection.all(include_sources=True),
    description="Watches params.yaml, the data source, the pool, the labels and the code; launches one run "
    "of exactly the stale stages (a new round when new images or labels arrived).",
)
def refresh_sensor(context: dg.SensorEvaluationContext, project: ProjectResource, mlflow: MlflowResource):
    return refresh_request(context.instance, project, mlflow, context.log)


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Ends the MLflow parent run of a Dagster run that succeeded.",
)
def mlflow_parent_finished(context: dg.RunStatusSensorContext, mlflow: MlflowResource):
    mlflow.finish_dagster_run(context.dagster_run.run_id, succeeded=True)


@dg.run_failure_sensor(
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Marks FAILED the MLflow runs of a Dagster run that failed (or was killed and "
    "then failed by Dagster's run monitoring).",
)
def mlflow_parent_failed(context: dg.RunFailureSensorContext, mlflow: MlflowResource):
    mlflow.finish_dagster_run(context.dagster_run.run_id, succeeded=False)

"""Sensor: re-run exactly what changed when params.yaml or the data source changes."""

import hashlib

import dagster as dg

from dagster_project.defs.planning import plan_refresh, source_changed
from dagster_project.defs.resources import ProjectResource
from dagster_project.stages import source_location


def refresh_request(instance: dg.DagsterInstance, project: ProjectResource) -> dg.RunRequest | dg.SkipReason:
    """A run of the changed params' observations and the stages they (or new data) make stale."""
    try:
        params = project.params()
    except ValueError as error:
        return dg.SkipReason(f"params.yaml is invalid, nothing launched: {error}")
    plan = plan_refresh(instance, params, data_changed=source_changed(instance, source_location(params.data)))
    if not plan:
        return dg.SkipReason("params.yaml and the data source are unchanged since the last run")
    state = "|".join([*plan.sections, *plan.stages, *(params.section_hash(name) for name in params.section_names())])
    return dg.RunRequest(run_key=hashlib.sha256(state.encode()).hexdigest()[:16], asset_selection=plan.asset_keys,
                         tags={"bilaf/trigger": "refresh", "bilaf/stages": ",".join(plan.stages)})


@dg.sensor(minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING,
           asset_selection=dg.AssetSelection.all(include_sources=True),
           description="Watches params.yaml and the data source; launches only the stale stages.")
def refresh_sensor(context: dg.SensorEvaluationContext, project: ProjectResource):
    return refresh_request(context.instance, project)

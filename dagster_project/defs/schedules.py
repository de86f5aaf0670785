"""Schedule: a nightly check for new data, labels or parameters (off by default; the sensor reacts sooner)."""

import dagster as dg

from dagster_project.defs.resources import ProjectResource
from dagster_project.defs.sensors import refresh_request
from dagster_project.defs.tracking import MlflowResource


@dg.schedule(
    cron_schedule="0 2 * * *",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    target=dg.AssetSelection.all(include_sources=True),
    description="Nightly: run a new round when images or labels arrived; re-run what changed parameters made stale.",
)
def nightly_refresh(context: dg.ScheduleEvaluationContext, project: ProjectResource, mlflow: MlflowResource):
    return refresh_request(context.instance, project, mlflow)

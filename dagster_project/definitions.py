"""Assembles the Dagster code location; the definitions themselves live in dagster_project/defs."""

from __future__ import annotations

import os
import warnings

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # before anything imports mlflow

import dagster as dg

# observable_source_asset and AssetSelection.all(include_sources=True) are "beta" in the pinned
# Dagster; the versions are pinned, so the warning only adds noise to every command.
warnings.filterwarnings("ignore", category=dg.BetaWarning)

from dagster_project.defs.assets import DATA_SOURCES, PARAMS_SOURCES, STAGE_ASSETS
from dagster_project.defs.checks import ASSET_CHECKS
from dagster_project.defs.resources import DvcResource, ProjectResource, default_project_dir
from dagster_project.defs.schedules import nightly_refresh
from dagster_project.defs.sensors import mlflow_parent_failed, mlflow_parent_finished, refresh_sensor
from dagster_project.defs.tracking import MlflowResource


def build_definitions(project_dir: str | None = None) -> dg.Definitions:
    root = project_dir or default_project_dir()
    return dg.Definitions(
        assets=[*PARAMS_SOURCES, *DATA_SOURCES, *STAGE_ASSETS],
        asset_checks=ASSET_CHECKS,
        sensors=[refresh_sensor, mlflow_parent_finished, mlflow_parent_failed],
        schedules=[nightly_refresh],
        resources={
            "project": ProjectResource(root=root),
            "dvc": DvcResource(root=root),
            "mlflow": MlflowResource(root=root),
        },
    )


defs = build_definitions()

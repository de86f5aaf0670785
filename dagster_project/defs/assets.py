"""Assets: one observable source per params.yaml section, one asset per pipeline stage.

Dagster ignores `Config` values in staleness (dagster issue 13826), so parameters are observable
source assets whose data version is the hash of their section of params.yaml. A stage depends on
the sections it reads; changing `boundary.penalty` therefore makes `boundary_set` and what follows
stale, and nothing upstream. Each stage's data version is the DVC hash of its output.
"""

import base64
import subprocess
from pathlib import Path

import dagster as dg

from dagster_project.config import Params
from dagster_project.defs.resources import DvcResource, MlflowResource, ProjectResource
from dagster_project.stages import STAGES, StageOutcome, StageSpec, lineage_params, run_stage

PARAMS_GROUP = "parameters"


def params_key(section: str) -> dg.AssetKey:
    return dg.AssetKey(["params", section])


def _params_source(section: str) -> dg.SourceAsset:
    @dg.observable_source_asset(key=params_key(section), group_name=PARAMS_GROUP,
                                description=f"The `{section}` section of params.yaml.")
    def _observe(project: ProjectResource) -> dg.ObserveResult:
        params = project.params()  # validates the whole file: bad values fail here, before compute
        values = {key: "null" if value is None else value for key, value in params.section(section).items()}
        return dg.ObserveResult(data_version=dg.DataVersion(params.section_hash(section)),
                                metadata={key: dg.MetadataValue.text(str(value)) for key, value in values.items()})

    return _observe


def _stage_asset(spec: StageSpec) -> dg.AssetsDefinition:
    deps = [dg.AssetKey(name) for name in spec.upstream] + [params_key(section) for section in lineage_params(spec.name)]

    @dg.asset(name=spec.name, deps=deps, description=spec.description, kinds={"python", "dvc", "mlflow"},
              group_name="training" if spec.name in ("finetuned_model", "evaluation") else "selection")
    def _materialize(context: dg.AssetExecutionContext, project: ProjectResource, dvc: DvcResource,
                     mlflow: MlflowResource) -> dg.MaterializeResult:
        params = project.params()
        tags = _lineage_tags(project, params, spec)
        with mlflow.asset_run(context, spec.name, tags) as tracked:
            outcome = run_stage(spec.name, project.paths.root, params)
            output_hash = dvc.track_pool() if spec.name == "pool" else dvc.commit_stage(spec.name)
            input_hashes = {} if spec.name == "pool" else dvc.dependency_hashes(spec.name)
            tracked.set_tags({"dvc_md5": output_hash,
                              **{f"dvc_input:{path}": md5 for path, md5 in input_hashes.items()}})
            for section in lineage_params(spec.name):
                tracked.log_params(params.section(section), prefix=f"{section}.")
            tracked.log_metrics(outcome.metrics)
            for path in [*outcome.files, *outcome.plots]:
                tracked.log_artifact(path)
            if spec.name == "finetuned_model":
                tracked.log_pytorch_model(project.paths.output(spec.name))
        return dg.MaterializeResult(
            data_version=dg.DataVersion(output_hash),
            metadata=_metadata(project, spec, outcome, output_hash, tracked.run_id),
        )

    return _materialize


def _lineage_tags(project: ProjectResource, params: Params, spec: StageSpec) -> dict[str, str]:
    tags = {"git_commit": _git_commit(project.paths.root), "backbone": params.features.backbone}
    tags.update({f"params_hash:{section}": params.section_hash(section) for section in lineage_params(spec.name)})
    pool_file = project.paths.root / "data.dvc"
    if pool_file.exists() and spec.name != "pool":
        import yaml

        tags["data_version"] = str(yaml.safe_load(pool_file.read_text())["outs"][0].get("md5", ""))
    return tags


def _git_commit(root: Path) -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def _metadata(project: ProjectResource, spec: StageSpec, outcome: StageOutcome, output_hash: str,
              mlflow_run_id: str) -> dict[str, dg.MetadataValue]:
    metadata: dict[str, dg.MetadataValue] = {
        "dvc_md5": dg.MetadataValue.text(output_hash),
        "path": dg.MetadataValue.path(str(project.paths.output(spec.name))),
        "mlflow_run_id": dg.MetadataValue.text(mlflow_run_id),
    }
    metadata.update({key: dg.MetadataValue.float(float(value)) for key, value in outcome.metrics.items()})
    metadata.update({key: dg.MetadataValue.text(str(value)) for key, value in outcome.metadata.items()})
    for plot in outcome.plots:
        encoded = base64.b64encode(plot.read_bytes()).decode()
        metadata[plot.stem] = dg.MetadataValue.md(f"![{plot.stem}](data:image/png;base64,{encoded})")
    return metadata


PARAMS_SOURCES = [_params_source(section) for section in Params.section_names()]
STAGE_ASSETS = [_stage_asset(spec) for spec in STAGES.values()]

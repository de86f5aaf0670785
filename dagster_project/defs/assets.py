"""Assets: observable sources (each params.yaml section, the pool, the labels) and one asset per
pipeline stage.

Dagster ignores `Config` values in staleness (dagster issue 13826), so parameters are observable
source assets whose data version is the hash of their section of params.yaml. The pool and the
labels are observable sources too, versioned by their content: observing the pool brings data/ up
to the configured source (it only ever adds items), observing the labels re-validates labels/ as
it is on disk, so an edit in place is seen. Each stage asset declares its code version (a hash of
the code it runs) and depends on its upstream stages, its sources and its own params sections only:
a changed section makes its stage stale, and the stages after it only if that stage's output then
changes (Dagster's stale status is one hop; `bilaf run` and the sensor plan the stages after a
running one, and each of those carries its version over when its inputs came back the same). Its
data version is the DVC hash of its output.
"""

import base64
import functools
import hashlib
import platform
import subprocess
import warnings
from pathlib import Path

import dagster as dg

from bilaf.config import Params
from bilaf.stages import SOURCE_PATHS, STAGES, StageOutcome, StageSpec, lineage_params, run_stage
from bilaf.stages.labels import imported_labels, labels_version
from bilaf.stages.sources import sync_configured_pool
from dagster_project.defs.keys import LABELS_KEY, POOL_KEY, SOURCE_FINGERPRINT, params_key, source_key
from dagster_project.defs.planning import configured_source_fingerprint, reusable_materialization
from dagster_project.defs.resources import DvcResource, ProjectResource
from dagster_project.defs.tracking import MlflowResource
from dagster_project.dvc import dvc_input_tag

PARAMS_GROUP = "parameters"
SOURCES_GROUP = "sources"
# Every stage writes into the one project folder: one step at a time across all runs
# (the instance's concurrency pool limit, see defs.planning.INSTANCE_CONFIG).
WRITER_POOL = "bilaf_project"
# Observable sources are how Dagster versions external data; its beta notice would print once per
# source on every command, burying what the run says.
warnings.filterwarnings(
    "ignore", message="Function `observable_source_asset` is currently in beta", category=dg.BetaWarning
)


def _params_source(section: str) -> dg.SourceAsset:
    @dg.observable_source_asset(
        key=params_key(section), group_name=PARAMS_GROUP, description=f"The `{section}` section of params.yaml."
    )
    def _observe(project: ProjectResource) -> dg.ObserveResult:
        params = project.params()  # validates the whole file: bad values fail here, before compute
        values = {key: "null" if value is None else value for key, value in params.section(section).items()}
        return dg.ObserveResult(
            data_version=dg.DataVersion(params.section_hash(section)),
            metadata={key: dg.MetadataValue.text(str(value)) for key, value in values.items()},
        )

    return _observe


@dg.observable_source_asset(
    key=POOL_KEY,
    group_name=SOURCES_GROUP,
    description="The image pool (data/): the configured source synced in, plus every "
    "folder `bilaf ingest` added. Only grows; versioned by content.",
)
def pool_source(
    context: dg.AssetExecutionContext, project: ProjectResource, dvc: DvcResource, mlflow: MlflowResource
) -> dg.ObserveResult:
    from bilaf.features import read_manifest

    params = project.params()
    provenance, diff = code_provenance(project.paths.root)
    with mlflow.asset_run(context, "pool", provenance) as tracked:
        _log_code_diff(tracked, diff)
        report = sync_configured_pool(project.paths, params)
        dvc_hash = dvc.track_source(SOURCE_PATHS["pool"])
        tracked.set_tags({"data_version": dvc_hash, "pool_version": report.version})
        tracked.log_params(params.section("data"), prefix="data.")
        tracked.log_metrics(
            {
                "items": sum(report.items.values()),
                "added": report.num_added,
                "duplicates": len(report.duplicates),
                "unreadable": len(report.unreadable),
                "ignored": len(report.ignored),
            }
        )
        tracked.log_artifact(project.paths.data / "pool_report.json")
        tracked.log_artifact(project.paths.data / "manifest.csv")
        tracked.log_pool(read_manifest(project.paths.data), report.version, project.paths.data)
    if report.unreadable:
        context.log.warning(
            f"{len(report.unreadable)} unreadable file(s) skipped, e.g. "
            + "; ".join(f"{u['origin']}: {u['reason']}" for u in report.unreadable[:3])
        )
    return dg.ObserveResult(
        data_version=dg.DataVersion(report.version),
        metadata={
            "items": dg.MetadataValue.int(sum(report.items.values())),
            **{f"{split}_items": dg.MetadataValue.int(count) for split, count in report.items.items()},
            "added": dg.MetadataValue.int(report.num_added),
            "duplicates": dg.MetadataValue.int(len(report.duplicates)),
            "unreadable": dg.MetadataValue.int(len(report.unreadable)),
            "ignored": dg.MetadataValue.int(len(report.ignored)),
            "dvc_md5": dg.MetadataValue.text(dvc_hash),
            SOURCE_FINGERPRINT: dg.MetadataValue.text(configured_source_fingerprint(params.data)),
        },
    )


@dg.observable_source_asset(
    key=LABELS_KEY,
    group_name=SOURCES_GROUP,
    description="The annotators' labels (labels/, one file per round plus the merged "
    "view), written by `bilaf labels import`; versioned by content.",
)
def labels_source(project: ProjectResource, dvc: DvcResource) -> dg.ObserveResult:
    from bilaf.annotation import ensure_store
    from bilaf.features import read_manifest

    params = project.params()
    ensure_store(project.paths.labels)
    if params.annotation.labels == "imported" and (project.paths.data / "manifest.csv").is_file():
        imported_labels(project.paths, read_manifest(project.paths.data))  # a broken edit fails here, named
    version = labels_version(project.paths, params)
    dvc_hash = dvc.track_source(SOURCE_PATHS["labels"])
    return dg.ObserveResult(
        data_version=dg.DataVersion(version),
        metadata={"mode": dg.MetadataValue.text(params.annotation.labels), "dvc_md5": dg.MetadataValue.text(dvc_hash)},
    )


def _stage_asset(spec: StageSpec) -> dg.AssetsDefinition:
    deps = (
        [dg.AssetKey(name) for name in spec.upstream]
        + [source_key(source) for source in spec.sources]
        + [params_key(section) for section in spec.params]
    )

    @dg.asset(
        name=spec.name,
        deps=deps,
        description=spec.description,
        kinds={"python", "dvc", "mlflow"},
        group_name=spec.group,
        code_version=spec.code_version(),
        pool=WRITER_POOL,
    )
    def _materialize(
        context: dg.AssetExecutionContext, project: ProjectResource, dvc: DvcResource, mlflow: MlflowResource
    ) -> dg.MaterializeResult:
        from bilaf.progress import reporting_progress
        from dagster_project.defs.progress import ProgressLog

        previous = reusable_materialization(context.instance, project.paths, spec.name)
        if previous is not None:
            context.log.info(
                f"{spec.name}: code, output and every input unchanged since run {previous.run_id}: "
                "reused, not recomputed"
            )
            return dg.MaterializeResult(
                data_version=dg.DataVersion(previous.asset_materialization.tags["dagster/data_version"]),
                metadata={
                    **previous.asset_materialization.metadata,
                    "reused_from_run": dg.MetadataValue.text(previous.run_id),
                },
            )
        params = project.params()
        provenance, diff = code_provenance(project.paths.root)
        with mlflow.asset_run(context, spec.name, _lineage_tags(project, params, spec, provenance)) as tracked:
            _log_code_diff(tracked, diff)
            with reporting_progress(ProgressLog(context.log)):
                outcome = run_stage(spec.name, project.paths.root, params)
            output_hash = dvc.commit_stage(spec.name)
            code_deps = {f"bilaf/{path}" for path in spec.code_paths}
            tracked.set_tags(
                {
                    "dvc_md5": output_hash,
                    **{
                        dvc_input_tag(path): md5
                        for path, md5 in dvc.dependency_hashes(spec.name).items()
                        if path not in code_deps  # the code is recorded as code_version
                    },
                    **({"round": str(outcome.metadata["round"])} if "round" in outcome.metadata else {}),
                }
            )
            for section in lineage_params(spec.name):
                tracked.log_params(params.section(section), prefix=f"{section}.")
            tracked.log_metrics(outcome.metrics)
            tracked.log_output(project.paths.output(spec.name))
            if "pool" in spec.sources or spec.group == "selection":  # what the selection chose from
                from bilaf.features import pool_version, read_manifest

                tracked.log_pool(
                    read_manifest(project.paths.data), pool_version(project.paths.data), project.paths.data
                )
            if spec.registers_model and outcome.metadata.get("trained"):
                outcome.metadata["registered_model_version"] = tracked.log_pytorch_model(
                    project.paths.output(spec.name), outcome.metadata.get("round")
                )
        return dg.MaterializeResult(
            data_version=dg.DataVersion(output_hash),
            metadata=_metadata(project, spec, outcome, output_hash, tracked),
        )

    return _materialize


@functools.cache
def cpu_model() -> str:
    """The CPU's model name as the kernel reports it (e.g. "AMD EPYC", "Intel(R) Xeon(R) Processor"),
    read once per process (every stage's tags carry it)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:  # not Linux
        pass
    return platform.processor() or platform.machine()


def _lineage_tags(
    project: ProjectResource, params: Params, spec: StageSpec, provenance: dict[str, str]
) -> dict[str, str]:
    import torch

    from dagster_project.dvc import tracked_hash

    # What varies across machines: float results depend on the thread count and the CPU's kernels
    # (its vector width, and MKL's paths, which differ between Intel and AMD CPUs of one width).
    tags = {
        **provenance,
        "code_version": spec.code_version(),
        "backbone": params.features.backbone,
        "torch_threads": str(torch.get_num_threads()),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_model": cpu_model(),
        "torch_version": torch.__version__,
    }
    tags.update({f"params_hash:{section}": params.section_hash(section) for section in lineage_params(spec.name)})
    for source, folder in SOURCE_PATHS.items():
        recorded = tracked_hash(project.paths.root, folder)
        if recorded:
            tags["data_version" if source == "pool" else "labels_dvc_md5"] = recorded
    tags["labels_version"] = labels_version(project.paths, params)
    return tags


# Files the pipeline itself rewrites: their changes are recorded as data and params, not as code.
_PIPELINE_STATE = (
    ":(exclude)dvc.lock",
    ":(exclude)*.dvc",
    ":(exclude)**/*.dvc",
    ":(exclude)params.yaml",
    ":(exclude).gitignore",
    ":(exclude)**/.gitignore",
)


def code_provenance(root: Path) -> tuple[dict[str, str], bytes]:
    """The git commit and whether the tracked code differs from it, and that diff (`git diff HEAD`,
    empty when the code is the commit's): `git_code_diff` is "clean" or the sha256 of the exact diff
    (logged beside as `code.diff`; files the pipeline rewrites, dvc.lock, the .dvc files, params.yaml,
    are not code: a params change is not a code change)."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return {"git_commit": "unknown", "git_code_diff": "unknown"}, b""
    completed = subprocess.run(
        ["git", "diff", "HEAD", "--binary", "--", ".", *_PIPELINE_STATE], cwd=root, capture_output=True
    )
    diff = completed.stdout if completed.returncode == 0 else b""
    return (
        {"git_commit": head.stdout.strip(), "git_code_diff": hashlib.sha256(diff).hexdigest() if diff else "clean"},
        diff,
    )


def _log_code_diff(tracked, diff: bytes) -> None:
    import tempfile

    if diff:
        with tempfile.TemporaryDirectory() as scratch:
            (Path(scratch) / "code.diff").write_bytes(diff)
            tracked.log_artifact(Path(scratch) / "code.diff")


def _metadata(
    project: ProjectResource, spec: StageSpec, outcome: StageOutcome, output_hash: str, tracked
) -> dict[str, dg.MetadataValue]:
    metadata: dict[str, dg.MetadataValue] = {
        "dvc_md5": dg.MetadataValue.text(output_hash),
        "path": dg.MetadataValue.path(str(project.paths.output(spec.name))),
        "mlflow_run_id": dg.MetadataValue.text(tracked.run_id),
        "mlflow_run": dg.MetadataValue.url(tracked.url),
    }
    metadata.update({key: dg.MetadataValue.float(float(value)) for key, value in outcome.metrics.items()})
    metadata.update({key: dg.MetadataValue.text(str(value)) for key, value in outcome.metadata.items()})
    for plot in outcome.plots:
        encoded = base64.b64encode(plot.read_bytes()).decode()
        metadata[plot.stem] = dg.MetadataValue.md(f"![{plot.stem}](data:image/png;base64,{encoded})")
    return metadata


PARAMS_SOURCES = [_params_source(section) for section in Params.section_names()]
DATA_SOURCES = [pool_source, labels_source]
STAGE_ASSETS = [_stage_asset(spec) for spec in STAGES.values()]

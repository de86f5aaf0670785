"""What needs to run, decided from what was recorded and what is on disk now. Shared by `bilaf run`,
the sensor and the schedule, so all three re-run exactly what changed.

A stage must run when it was never materialized, its code version changed, its output is gone, an
upstream stage runs, or one of its inputs (a params section, the pool, the labels, an upstream
stage) has another version now than the one its last materialization recorded. Dagster records
those in public tags of each materialization (`dagster/code_version`,
`dagster/input_data_version/<key>`); this planner reads them and adds what Dagster's own stale
status does not see: transitive staleness, missing outputs, and a data source whose content
changed before anyone observed it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import dagster as dg

from bilaf import rounds
from bilaf.config import DataParams, Params
from bilaf.stages import SOURCE_PATHS, STAGES
from bilaf.stages.labels import labels_version
from bilaf.stages.paths import ProjectPaths
from dagster_project import dvc
from dagster_project.defs.keys import LABELS_KEY, POOL_KEY, SOURCE_FINGERPRINT, params_key, source_key

DATA_VERSION_TAG = "dagster/data_version"
CODE_VERSION_TAG = "dagster/code_version"
INPUT_VERSION_TAG = "dagster/input_data_version/{}"
IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


@dataclasses.dataclass(frozen=True)
class RefreshPlan:
    observe: tuple[dg.AssetKey, ...]  # sources whose content changed (or was never observed)
    stages: tuple[str, ...]  # stages to materialize, in pipeline order
    reasons: dict[str, str]  # why each stage runs
    inputs_key: str  # hash of every input version: the same inputs, the same key

    @property
    def asset_keys(self) -> list[dg.AssetKey]:
        return [*self.observe, *(dg.AssetKey(stage) for stage in self.stages)]

    def __bool__(self) -> bool:
        return bool(self.observe or self.stages)


def current_versions(paths: ProjectPaths, params: Params) -> dict[dg.AssetKey, str | None]:
    """The version every source has on disk now (None: the pool does not exist yet)."""
    from bilaf.features import pool_version

    versions: dict[dg.AssetKey, str | None] = {
        params_key(section): params.section_hash(section) for section in Params.section_names()
    }
    versions[POOL_KEY] = pool_version(paths.data) if (paths.data / "manifest.csv").is_file() else None
    versions[LABELS_KEY] = labels_version(paths, params)
    return versions


def observed(instance: dg.DagsterInstance, key: dg.AssetKey) -> dict[str, str] | None:
    """Data version and metadata of a source's last observation; None if never observed."""
    records = instance.fetch_observations(key, limit=1).records
    if not records:
        return None
    observation = records[0].asset_observation
    return {
        "version": (observation.tags or {}).get(DATA_VERSION_TAG),
        **{name: str(value.value) for name, value in observation.metadata.items()},
    }


_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def configured_source_fingerprint(section: DataParams) -> str:
    """Content fingerprint of the configured source's files: relative paths and sha256 of their
    bytes (cached by path, size and mtime). Touching a file or renaming nothing changes nothing."""
    from bilaf.features import default_source_root

    location = Path(section.root) if section.root else default_source_root(section.source)
    if location is None or not location.exists():
        return "absent"
    digest = hashlib.sha256()
    files = [location] if location.is_file() else sorted(p for p in location.rglob("*") if p.is_file())
    for path in files:
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        if key not in _FILE_HASHES:
            _FILE_HASHES[key] = hashlib.sha256(path.read_bytes()).hexdigest()
        digest.update(f"{path.relative_to(location.parent).as_posix()}\0{_FILE_HASHES[key]}\n".encode())
    return digest.hexdigest()[:16]


def dvc_changes(paths: ProjectPaths, *targets: str) -> dict[str, str]:
    """What `dvc status` says differs from dvc.lock and the .dvc files: {stage or .dvc file: what}
    (of ``targets`` only, when given).

    The planner adds these, so that `bilaf run` and `dvc status` never disagree: an output deleted
    or edited by hand, a source folder changed in place, a code folder edited.
    """
    if not dvc.is_dvc_project(paths.root):
        return {}
    report = json.loads(dvc.run_dvc(paths.root, "status", "--json", *targets) or "{}")
    changes = {}
    for name, entries in report.items():
        parts = []
        for entry in entries:
            if isinstance(entry, dict):
                parts += [
                    f"{path} {state}"
                    for kind in entry.values()
                    if isinstance(kind, dict)
                    for path, state in kind.items()
                ]
            else:
                parts.append(str(entry))
        changes[name] = ", ".join(parts)
    return changes


def plan_refresh(instance: dg.DagsterInstance, paths: ProjectPaths, params: Params) -> RefreshPlan:
    """Sources to observe and stages to materialize now, each stage with its reason.

    `dvc status` is asked first and params.yaml read after it, so an edit made while planning is
    seen by both or by the versions alone: a stage is never planned for a change that the run does
    not also observe (the daemon's sensor once planned a penalty change from DVC's view alone)."""
    from bilaf.config import load_params

    disk = dvc_changes(paths)
    if paths.params.is_file():
        params = load_params(paths.params)
    versions = current_versions(paths, params)
    last = {key: observed(instance, key) for key in versions}
    observe = [key for key, version in versions.items() if last[key] is None or last[key]["version"] != version]
    for source, folder in SOURCE_PATHS.items():  # a source folder changed in place: observing re-records it
        if f"{folder}.dvc" in disk and source_key(source) not in observe:
            observe.append(source_key(source))
    fingerprint = configured_source_fingerprint(params.data)
    pool_seen = last[POOL_KEY]
    if POOL_KEY not in observe and (
        pool_seen is None or pool_seen.get(SOURCE_FINGERPRINT) != fingerprint or params_key("data") in observe
    ):
        observe.append(POOL_KEY)  # the configured source has news: syncing it may add items
    reasons: dict[str, str] = {}
    for spec in STAGES.values():
        reason = _stale_reason(instance, paths, spec.name, versions, set(observe), reasons)
        if reason is None and spec.name in disk:
            reason = f"dvc status: {disk[spec.name]}"
        if reason:
            reasons[spec.name] = reason
    key_material = sorted(f"{key.to_user_string()}={version}" for key, version in versions.items())
    key_material += [f"source={fingerprint}", *(f"{name}@{spec.code_version()}" for name, spec in STAGES.items())]
    return RefreshPlan(
        observe=tuple(observe),
        stages=tuple(reasons),
        reasons=reasons,
        inputs_key=hashlib.sha256("\n".join(key_material).encode()).hexdigest()[:16],
    )


def _stale_reason(
    instance: dg.DagsterInstance,
    paths: ProjectPaths,
    stage: str,
    versions: dict[dg.AssetKey, str | None],
    changed: set[dg.AssetKey],
    running: dict[str, str],
) -> str | None:
    spec = STAGES[stage]
    event = instance.get_latest_materialization_event(dg.AssetKey(stage))
    if event is None or event.asset_materialization is None:
        return "never materialized"
    tags = event.asset_materialization.tags or {}
    if tags.get(CODE_VERSION_TAG) != spec.code_version():
        return "its code changed"
    if not paths.output(stage).exists():
        return f"its output {paths.output(stage).relative_to(paths.root)} is missing"
    for upstream in spec.upstream:
        if upstream in running:
            return f"{upstream} runs"
        latest = instance.get_latest_materialization_event(dg.AssetKey(upstream))
        if tags.get(INPUT_VERSION_TAG.format(upstream)) != (latest.asset_materialization.tags or {}).get(
            DATA_VERSION_TAG
        ):
            return f"{upstream} has a newer version"
    inputs = [source_key(source) for source in spec.sources] + [params_key(section) for section in spec.params]
    for key in inputs:
        if key in changed or tags.get(INPUT_VERSION_TAG.format(key.to_user_string())) != versions[key]:
            return f"{key.to_user_string()} changed"
    return None


def reusable_materialization(instance: dg.DagsterInstance, paths: ProjectPaths, stage: str):
    """The stage's last materialization when nothing it depends on changed since: the same code,
    its output still there, and every input (params sections, sources, upstream stages) at the
    version that materialization recorded. A run that re-observed a source which turned out
    unchanged (a sync that added nothing, an unreadable file dropped in the source folder) then
    reuses the stage instead of recomputing it. None when the stage must run."""
    versions = {
        key: (record or {}).get("version") for key, record in ((key, observed(instance, key)) for key in _source_keys())
    }
    if _stale_reason(instance, paths, stage, versions, set(), {}) is not None or dvc_changes(paths, stage):
        return None
    return instance.get_latest_materialization_event(dg.AssetKey(stage))


def _source_keys() -> list[dg.AssetKey]:
    return [*(params_key(section) for section in Params.section_names()), POOL_KEY, LABELS_KEY]


def refresh_in_flight(instance: dg.DagsterInstance) -> dg.RunRecord | None:
    """A run of this project's instance that is queued or running (it may be writing artifacts)."""
    records = instance.get_run_records(filters=dg.RunsFilter(statuses=IN_FLIGHT), limit=1)
    return records[0] if records else None


def expected_round(paths: ProjectPaths, plan: RefreshPlan) -> int:
    """The round the planned run will work on: the open round, or the next one when the pool or
    the labels change after the open round's batch was issued."""
    ledger = rounds.Ledger.load(paths.root)
    issued = rounds.issued_batch(paths.root)
    sources_change = any(key in plan.observe for key in (POOL_KEY, LABELS_KEY))
    if issued is not None and int(issued["round"]) == ledger.open_round and sources_change:
        return ledger.open_round + 1
    return ledger.open_round


def project_dagster_home(root: Path) -> Path:
    """$DAGSTER_HOME, else <project>/.dagster_home, created with this project's instance settings."""
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(Path(root) / ".dagster_home")))
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(INSTANCE_CONFIG)
    return home


# One writer at a time: every stage step is in one concurrency pool of size 1, so steps of two
# runs (UI, sensor, schedule) never write the project folder at once. Run monitoring fails a
# daemon-launched run whose worker died (a killed run ends FAILED, and so do its MLflow runs) and
# frees the slot its step held; `close_abandoned_runs` does both for a killed `bilaf run`.
INSTANCE_CONFIG = """telemetry:
  enabled: false
concurrency:
  pools:
    default_limit: 1
run_monitoring:
  enabled: true
  start_timeout_seconds: 300
  max_resume_run_attempts: 0
  free_slots_after_run_end_seconds: 30
"""

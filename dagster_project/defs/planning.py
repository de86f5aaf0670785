"""What needs to run: the params sections whose hash changed since their last observation, the
stages never materialized, and everything downstream of either. Shared by `bilaf run`, the sensor
and the schedule, so all three re-run exactly what changed.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import dagster as dg
from dagster._core.definitions.data_version import (extract_data_provenance_from_entry,
                                                    extract_data_version_from_entry)

from dagster_project.config import Params
from dagster_project.defs.assets import params_key
from dagster_project.stages import SOURCE_FINGERPRINT, STAGES, lineage_params, source_fingerprint


@dataclasses.dataclass(frozen=True)
class RefreshPlan:
    sections: tuple[str, ...]  # params sections to observe (their hash changed or was never seen)
    stages: tuple[str, ...]  # stages to materialize, in pipeline order

    @property
    def asset_keys(self) -> list[dg.AssetKey]:
        return [params_key(section) for section in self.sections] + [dg.AssetKey(stage) for stage in self.stages]

    def __bool__(self) -> bool:
        return bool(self.sections or self.stages)


def observed_section_hash(instance: dg.DagsterInstance, section: str) -> str | None:
    record = instance.get_latest_data_version_record(params_key(section), is_source=True)
    version = None if record is None else extract_data_version_from_entry(record.event_log_entry)
    return None if version is None else version.value


def downstream_stages(roots: set[str]) -> set[str]:
    """`roots` plus every stage that depends on one of them, transitively."""
    selected = set(roots)
    for spec in STAGES.values():  # STAGES is in topological order
        if any(name in selected for name in spec.upstream):
            selected.add(spec.name)
    return selected


def built_with_other_params(instance: dg.DagsterInstance, stage: str, params: Params) -> bool:
    """True when the stage's last materialization recorded other params hashes than the current ones."""
    event = instance.get_latest_materialization_event(dg.AssetKey(stage))
    provenance = extract_data_provenance_from_entry(event) if event is not None else None
    recorded = provenance.input_data_versions if provenance is not None else {}
    return any(recorded.get(params_key(section)) != dg.DataVersion(params.section_hash(section))
               for section in lineage_params(stage))


def plan_refresh(instance: dg.DagsterInstance, params: Params, *, data_changed: bool = False) -> RefreshPlan:
    """Observe the sections whose hash is new; materialize every stage that is missing or was built
    with other parameters (observed already or not), or new data, and everything downstream."""
    sections = tuple(section for section in Params.section_names()
                     if observed_section_hash(instance, section) != params.section_hash(section))
    roots = {name for name in STAGES if built_with_other_params(instance, name, params)}
    if data_changed:
        roots.add("pool")
    selected = downstream_stages(roots)
    return RefreshPlan(sections=sections, stages=tuple(name for name in STAGES if name in selected))


def source_changed(instance: dg.DagsterInstance, location: Path | None) -> bool:
    """True when the source differs from what the last `pool` materialization was built from."""
    event = instance.get_latest_materialization_event(dg.AssetKey("pool"))
    if event is None or event.asset_materialization is None:
        return False  # never built: plan_refresh already treats the pool as missing
    recorded = event.asset_materialization.metadata.get(SOURCE_FINGERPRINT)
    return recorded is None or recorded.value != source_fingerprint(location)

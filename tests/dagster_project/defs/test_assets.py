"""The asset definitions: each params section is a source versioned by its hash, and each stage
asset declares its code version and depends on every input the planner compares."""

import copy

import dagster as dg
from pipeline.conftest import TINY_PARAMS, write_params

from bilaf.config import Params, load_params
from bilaf.stages import STAGES
from dagster_project.defs.assets import PARAMS_SOURCES, STAGE_ASSETS
from dagster_project.defs.keys import params_key, source_key
from dagster_project.defs.resources import ProjectResource


def _observe(root, instance) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        PARAMS_SOURCES,
        selection=dg.AssetSelection.all(include_sources=True),
        instance=instance,
        resources={"project": ProjectResource(root=str(root))},
        raise_on_error=False,
    )


def _versions(result: dg.ExecuteInProcessResult) -> dict[str, str]:
    return {
        event.asset_key.to_user_string(): event.event_specific_data.asset_observation.data_version
        for event in result.get_asset_observation_events()
    }


def test_each_params_section_is_observed_at_its_hash(project_dir, instance):
    result = _observe(project_dir, instance)
    assert result.success
    params = load_params(project_dir / "params.yaml")
    assert _versions(result) == {f"params/{s}": params.section_hash(s) for s in Params.section_names()}
    boundary = instance.fetch_observations(params_key("boundary"), limit=1).records[0].asset_observation
    assert {key: value.value for key, value in boundary.metadata.items()} == {"budget": "40", "penalty": "1.1"}

    changed = copy.deepcopy(TINY_PARAMS)
    changed["boundary"]["penalty"] = 1.5
    write_params(project_dir, changed)
    after = _versions(_observe(project_dir, instance))
    before = _versions(result)
    assert {key for key in after if after[key] != before[key]} == {"params/boundary"}


def test_invalid_params_fail_the_observation(project_dir, instance):
    bad = copy.deepcopy(TINY_PARAMS)
    bad["boundary"]["penalty"] = 0.5
    write_params(project_dir, bad)
    result = _observe(project_dir, instance)
    assert not result.success and not result.get_asset_observation_events()
    assert len(result.get_step_failure_events()) == len(PARAMS_SOURCES)  # each section's step validates the file
    assert all(
        "boundary.penalty must be >= 1, got 0.5" in event.step_failure_data.error.to_string()
        for event in result.get_step_failure_events()
    )


def test_every_stage_asset_declares_its_code_version_and_every_input():
    assert [asset.key.to_user_string() for asset in STAGE_ASSETS] == list(STAGES)
    for asset in STAGE_ASSETS:
        (spec,) = asset.specs
        stage = STAGES[asset.key.to_user_string()]
        assert spec.code_version == stage.code_version()
        assert {dep.asset_key for dep in spec.deps} == (
            {dg.AssetKey(name) for name in stage.upstream}
            | {source_key(source) for source in stage.sources}
            | {params_key(section) for section in stage.params}
        )


def test_each_stage_depends_on_its_own_params_sections_only():
    """Written out by hand: a penalty change makes boundary_set stale and nothing else; the stages
    after it see the change only as a new version of their input, when boundary_set's output changes."""
    deps = {
        asset.key.to_user_string(): {dep.asset_key.to_user_string() for dep in asset.specs_by_key[asset.key].deps}
        for asset in STAGE_ASSETS
    }
    assert deps["boundary_set"] == {"embeddings", "round", "core_centers", "denoised_pool", "params/boundary"}
    assert deps["finetuned_model"] == {"annotation_batch", "pool", "params/features", "params/finetune"}
    assert {stage for stage, inputs in deps.items() if "params/boundary" in inputs} == {"boundary_set"}

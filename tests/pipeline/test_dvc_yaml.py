"""dvc.yaml declares exactly the stages, deps, params and outs of the Dagster assets."""
from pathlib import Path

import yaml

from dagster_project.stages import STAGES, ProjectPaths, lineage_params

REPO = Path(__file__).resolve().parents[2]


def _relative(stage: str) -> str:
    return str(ProjectPaths(REPO).output(stage).relative_to(REPO))


def test_dvc_stages_match_the_dagster_assets():
    declared = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert list(declared) == [name for name in STAGES if name != "pool"]
    for name, stage in declared.items():
        spec = STAGES[name]
        assert stage["cmd"] == f"bilaf stage {name}"
        assert stage["deps"] == [_relative(upstream) for upstream in spec.upstream]
        assert stage["params"] == list(lineage_params(name))
        assert stage["outs"] == [_relative(name)]


def test_pool_is_tracked_by_data_dvc():
    tracked = yaml.safe_load((REPO / "data.dvc").read_text())
    assert [out["path"] for out in tracked["outs"]] == ["data"]

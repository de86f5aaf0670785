"""dvc.yaml declares exactly the stages, deps, params and outs of the Dagster assets."""

from pathlib import Path

import yaml

from bilaf.stages import SOURCE_PATHS, STAGES, lineage_params

REPO = Path(__file__).resolve().parents[3]


def test_dvc_stages_match_the_dagster_assets():
    declared = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert list(declared) == list(STAGES)
    for name, stage in declared.items():
        spec = STAGES[name]
        assert stage["cmd"] == f"bilaf stage {name}"
        assert stage["deps"] == (
            [STAGES[upstream].output for upstream in spec.upstream]
            + [SOURCE_PATHS[source] for source in spec.sources]
            + [f"bilaf/{path}" for path in spec.code_paths]
        )
        assert stage["params"] == list(lineage_params(name))
        assert stage["outs"] == [{spec.output: {"persist": True}} if spec.persist else spec.output]


def test_every_code_dependency_exists_and_bytecode_is_ignored():
    for spec in STAGES.values():
        for path in spec.code_paths:
            assert (REPO / "bilaf" / path).exists(), path
    assert {"__pycache__", "*.pyc"} <= set((REPO / ".dvcignore").read_text().split())


def test_pool_is_tracked_by_data_dvc():
    tracked = yaml.safe_load((REPO / "data.dvc").read_text())
    assert [out["path"] for out in tracked["outs"]] == ["data"]

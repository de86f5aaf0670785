"""dvc.yaml is the stage table's rendering, and every stage's code version covers the code its
runner calls."""

import ast
from pathlib import Path

import yaml

from bilaf.stages import STAGES
from bilaf.stages.table import PACKAGE_DIR, code_files
from dagster_project.cli import main as bilaf
from dagster_project.dvc import dvc_yaml_text

REPO = Path(__file__).resolve().parents[3]
# Imported by runners without being part of what a stage computes: the params schema (its values
# are the stage's params, hashed apart), error types, and where work runs (the same bytes wherever
# it runs: tests/dagster_project/pipeline/test_cluster.py).
NOT_CODE = {"bilaf.config", "bilaf.errors", "bilaf.compute"}


def test_the_committed_dvc_yaml_is_the_stage_tables_rendering(tmp_path, capsys):
    assert (REPO / "dvc.yaml").read_text() == dvc_yaml_text(), "dvc.yaml is stale: run `make dvc-yaml`"
    assert bilaf(["dvc-yaml", "--project", str(tmp_path), "--check"]) == 1  # none there yet
    assert bilaf(["dvc-yaml", "--project", str(tmp_path)]) == 0
    assert bilaf(["dvc-yaml", "--project", str(tmp_path), "--check"]) == 0
    assert "as the stage table defines it" in capsys.readouterr().out
    declared = yaml.safe_load((tmp_path / "dvc.yaml").read_text())["stages"]
    assert list(declared) == list(STAGES)
    assert declared["boundary_set"]["deps"][:2] == ["artifacts/embeddings", "rounds"]
    assert declared["round"]["outs"] == [{"rounds": {"persist": True}}]


def _imports(file: Path) -> set[str]:
    """The bilaf modules ``file`` imports, anywhere in it (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bilaf"):
            submodules = {f"{node.module}.{alias.name}" for alias in node.names}
            submodules = {module for module in submodules if _module_file(module)}
            found.update(submodules or {node.module})  # `from bilaf import rounds` imports bilaf.rounds
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("bilaf"))
    return found


def _module_file(module: str) -> Path | None:
    """The file or package under bilaf/ that ``module`` names, None for a name inside a module."""
    path = PACKAGE_DIR.parent / module.replace(".", "/")
    if path.is_dir():
        return path
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


def test_every_stage_s_code_version_covers_what_its_runner_imports():
    """Followed through the bilaf.stages modules; a library package (bilaf.selection, ...) counts as a
    whole, as the stage's code lists it."""
    for spec in STAGES.values():
        covered = set(code_files(spec.code_paths))
        todo, seen = [PACKAGE_DIR / spec.module], set()
        while todo:
            file = todo.pop()
            seen.add(file)
            for module in _imports(file):
                target = _module_file(module)
                if target is None or module in NOT_CODE or module == "bilaf.stages.table":
                    continue
                files = sorted(target.rglob("*.py")) if target.is_dir() else [target]
                missing = [f.relative_to(PACKAGE_DIR).as_posix() for f in files if f not in covered]
                assert not missing, f"{spec.name}: {file.name} imports {module}, not in its code ({missing})"
                if module.startswith("bilaf.stages.") and target not in seen:
                    todo.append(target)


def test_every_code_dependency_exists_and_bytecode_is_ignored():
    for spec in STAGES.values():
        for path in spec.code_paths:
            assert (REPO / "bilaf" / path).exists(), path
    assert {"__pycache__", "*.pyc"} <= set((REPO / ".dvcignore").read_text().split())


def test_pool_is_tracked_by_data_dvc():
    tracked = yaml.safe_load((REPO / "data.dvc").read_text())
    assert [out["path"] for out in tracked["outs"]] == ["data"]


def test_editing_one_runner_changes_the_code_version_of_its_stages_only(tmp_path, monkeypatch):
    import shutil

    from bilaf.stages import table

    copy = tmp_path / "bilaf"
    shutil.copytree(PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(table, "PACKAGE_DIR", copy)
    before = {name: spec.code_version() for name, spec in STAGES.items()}
    with (copy / "stages" / "training.py").open("a") as runner:
        runner.write("\n# an edit\n")
    after = {name: spec.code_version() for name, spec in STAGES.items()}
    assert {name for name in STAGES if before[name] != after[name]} == {"finetuned_model", "evaluation"}
    with (copy / "rounds.py").open("a") as glue:
        glue.write("\n# an edit\n")
    assert all(spec.code_version() != after[name] for name, spec in STAGES.items())  # the glue: every stage

"""Faults a user can cause, each injected on a materialized project: the outcome is a clear error or a
correct re-run, nothing is lost, and `bilaf run` and `dvc status` agree before and after.

Tests run in file order on one project (module fixture `faulty`); each leaves it up to date.
"""

import contextlib
import copy
import errno
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml
from pipeline.conftest import BIN, make_project, run

from bilaf.config import load_params
from bilaf.stages import STAGES
from bilaf.stages.paths import ProjectPaths
from dagster_project.cli import main as bilaf
from dagster_project.definitions import build_definitions
from dagster_project.defs.planning import plan_refresh
from dagster_project.defs.sensors import refresh_sensor

OUTPUTS = {name: spec.output for name, spec in STAGES.items()}


def _env(root: Path) -> dict:
    return {
        **os.environ,
        "DAGSTER_HOME": str(root / ".dagster_home"),
        "BILAF_PROJECT_DIR": str(root),
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
    }


def _planned(root: Path) -> set[str]:
    """What `bilaf run` would do now: the sources it would observe and the stages it would run."""
    with dg.DagsterInstance.get() as instance:
        plan = plan_refresh(instance, ProjectPaths(root), load_params(root / "params.yaml"))
    return {key.to_user_string() for key in plan.observe} | set(plan.stages)


def _dvc_dirty(root: Path) -> set[str]:
    """What `dvc status` says is out of date (stages and .dvc files)."""
    return set(yaml.safe_load(run([str(BIN / "dvc"), "status", "--json"], root, _env(root)).stdout) or {})


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every file of every stage output, and the sources."""
    files = {}
    for folder in [*OUTPUTS.values(), "data", "labels"]:
        path = root / folder
        for file in [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()):
            files[file.relative_to(root).as_posix()] = file.read_bytes()
    return files


def _assert_up_to_date(root: Path) -> None:
    assert _planned(root) == set() and _dvc_dirty(root) == set()


def test_the_project_starts_up_to_date_for_both(faulty):
    assert bilaf(["run", "--project", str(faulty)]) == 0
    _assert_up_to_date(faulty)


@pytest.mark.parametrize(
    ("fault", "stage"),
    [
        ("delete", "core_centers"),
        ("edit", "boundary_set"),
        ("delete", "embeddings"),
    ],
)
def test_a_deleted_or_edited_artifact_is_stale_for_both_and_the_next_run_restores_it(faulty, fault, stage):
    before = _snapshot(faulty)
    output = faulty / OUTPUTS[stage]
    if fault == "delete":
        shutil.rmtree(output) if output.is_dir() else output.unlink()
    else:
        with open(output / "selection.csv", "a") as handle:
            handle.write("999,ffffffffffffffff,x,core,,,,,,,,1\n")
    assert stage in _planned(faulty) and stage in _dvc_dirty(faulty)
    assert bilaf(["run", "--project", str(faulty)]) == 0
    assert _snapshot(faulty) == before
    _assert_up_to_date(faulty)


def test_a_pool_image_deleted_in_place_is_seen_by_both_and_restored(faulty):
    before = _snapshot(faulty)
    image = next((faulty / "data" / "images" / "train").iterdir())
    image.unlink()
    assert "pool" in _planned(faulty) and "data.dvc" in _dvc_dirty(faulty)
    assert bilaf(["run", "--project", str(faulty)]) == 0
    assert _snapshot(faulty) == before
    _assert_up_to_date(faulty)
    with dg.DagsterInstance.get() as instance:  # the stages were reused, not recomputed
        latest = instance.get_latest_materialization_event(dg.AssetKey("core_centers"))
    assert "reused_from_run" in latest.asset_materialization.metadata


def test_touching_the_source_files_changes_nothing(faulty, capsys):
    for file in (faulty / "source").iterdir():
        os.utime(file, ns=(time.time_ns(), time.time_ns()))
    _assert_up_to_date(faulty)
    with dg.DagsterInstance.get() as instance:
        resources = build_definitions(str(faulty)).resources
        with dg.build_sensor_context(instance=instance, resources=resources) as context:
            assert isinstance(refresh_sensor(context), dg.SkipReason)
    assert bilaf(["run", "--project", str(faulty)]) == 0
    assert "up to date" in capsys.readouterr().out


def test_a_missing_params_section_fails_before_any_work_and_overwrites_nothing(faulty, capsys):
    before = _snapshot(faulty)
    original = (faulty / "params.yaml").read_text()
    params = yaml.safe_load(original)
    del params["boundary"]
    (faulty / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        assert bilaf(["run", "--project", str(faulty)]) == 2
        assert "params: section boundary is missing" in capsys.readouterr().err
        assert (
            subprocess.run(
                [str(BIN / "bilaf"), "stage", "boundary_set", "--project", str(faulty)],
                capture_output=True,
                text=True,
                env=_env(faulty),
            ).returncode
            == 2
        )
    finally:
        (faulty / "params.yaml").write_text(original)
    assert _snapshot(faulty) == before
    _assert_up_to_date(faulty)


def test_a_budget_larger_than_an_image_folder_pool_is_refused_before_any_work(tmp_path, capsys):
    from PIL import Image

    photos = tmp_path / "photos"
    for index in range(30):
        (photos / f"class-{index % 3}").mkdir(parents=True, exist_ok=True)
        Image.new("L", (8, 8), index * 8).save(photos / f"class-{index % 3}" / f"{index}.png")
    params = yaml.safe_load((Path(__file__).resolve().parents[3] / "params.yaml").read_text())
    params["data"].update(source="image-folder", root=str(photos), train_size=None, test_size=10)
    params["boundary"]["budget"] = 40
    params["core"]["n_cores"] = 40
    (tmp_path / "project").mkdir()
    root = make_project(tmp_path / "project", params)
    started = time.perf_counter()
    assert bilaf(["run", "--project", str(root)]) == 2
    assert "params: boundary.budget (40) must not exceed the 20 train items" in capsys.readouterr().err
    assert time.perf_counter() - started < 60 and not (root / "data").exists() and not (root / "artifacts").exists()


@pytest.mark.parametrize(("key", "text"), [("boundary.penalty", ".inf"), ("finetune.lr", ".nan")])
def test_a_non_finite_number_in_params_yaml_is_refused_before_any_work(tmp_path, capsys, key, text):
    params = yaml.safe_load((Path(__file__).resolve().parents[3] / "params.yaml").read_text())
    root = make_project(tmp_path, params)
    section, name = key.split(".")
    written = yaml.safe_dump(params, sort_keys=False)
    line = f"  {name}: {params[section][name]}\n"
    assert written.count(line) == 1
    (root / "params.yaml").write_text(written.replace(line, f"  {name}: {text}\n"))  # as a person types it
    assert bilaf(["run", "--project", str(root)]) == 2
    assert f"params: {key} must be a finite number, got {float(text[1:])}" in capsys.readouterr().err
    assert not (root / "data").exists() and not (root / "artifacts").exists()


@pytest.mark.parametrize("stage", list(STAGES))
def test_kill_9_mid_stage_keeps_the_last_good_output_and_the_next_run_is_correct(faulty, stage):
    before = _snapshot(faulty)
    output = faulty / OUTPUTS[stage]
    process = subprocess.Popen(
        [str(BIN / "bilaf"), "stage", stage, "--project", str(faulty)],
        env=_env(faulty),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:  # kill it while it writes, or computes
        if any(output.parent.glob(f".{output.name}.*")) or (output.is_dir() and any(output.glob(".*.tmp-*"))):
            break
        time.sleep(0.05)
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert _snapshot(faulty) == before  # the last good output is untouched, nothing half-written replaced it
    assert bilaf(["run", "--project", str(faulty)]) == 0
    assert _snapshot(faulty) == before and not list(output.parent.glob(f".{output.name}.*"))
    _assert_up_to_date(faulty)


def test_a_killed_bilaf_run_ends_failed_in_dagster_and_mlflow_and_the_next_run_is_correct(faulty, capsys):
    import mlflow

    params = yaml.safe_load((faulty / "params.yaml").read_text())
    params["evaluation"]["knn_k"] = 2
    (faulty / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{faulty / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("bilaf").experiment_id
    process = subprocess.Popen(
        [str(BIN / "bilaf"), "run", "--project", str(faulty)],
        env=_env(faulty),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline, running = time.time() + 300, []
    while time.time() < deadline and process.poll() is None and not running:  # kill it inside the step
        time.sleep(0.2)
        with contextlib.suppress(Exception):  # the store may be busy with the run's own writes
            running = client.search_runs(
                [experiment], "tags.asset_key = 'evaluation' and attributes.status = 'RUNNING'"
            )
    assert running, "the run ended before its evaluation step started"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    dagster_run = running[0].data.tags["dagster_run_id"]
    assert bilaf(["run", "--project", str(faulty)]) == 0
    assert f"Run {dagster_run} was killed before it finished" in capsys.readouterr().out
    with dg.DagsterInstance.get() as instance:
        assert instance.get_run_by_id(dagster_run).status == dg.DagsterRunStatus.FAILURE
    left = client.search_runs([experiment], f"tags.dagster_run_id = '{dagster_run}'")
    assert {run.data.tags["bilaf_level"] for run in left} == {"dagster_run", "asset"}
    assert {run.info.status for run in left if run.info.status != "FINISHED"} == {"FAILED"}
    assert {run.data.tags.get("asset_key") for run in left if run.info.status == "FAILED"} >= {None, "evaluation"}
    _assert_up_to_date(faulty)


def test_a_corrupt_cache_shard_is_set_aside_and_its_items_embedded_again(faulty):
    before = _snapshot(faulty)
    (shard,) = sorted((faulty / ".cache" / "embeddings").glob("*/shard-*.npz"))[:1]
    shard.write_bytes(shard.read_bytes()[: len(shard.read_bytes()) // 2])
    shutil.rmtree(faulty / OUTPUTS["embeddings"])
    with pytest.warns(UserWarning, match="is unreadable"):
        assert bilaf(["run", "--project", str(faulty)]) == 0
    assert shard.with_suffix(".corrupt").exists()
    assert _snapshot(faulty) == before
    _assert_up_to_date(faulty)


def test_a_full_disk_fails_the_write_clearly_and_keeps_the_last_good_output(faulty, capsys, monkeypatch):
    before = _snapshot(faulty)
    params = yaml.safe_load((faulty / "params.yaml").read_text())
    changed = copy.deepcopy(params)
    changed["boundary"]["penalty"] = 1.3
    (faulty / "params.yaml").write_text(yaml.safe_dump(changed, sort_keys=False))
    real_write = Path.write_text

    def no_space(path, *args, **kwargs):
        if "boundary_set" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_write(path, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", no_space)
    try:
        assert bilaf(["stage", "boundary_set", "--project", str(faulty)]) == 1
        assert "No space left on device" in capsys.readouterr().err
    finally:
        monkeypatch.undo()
        (faulty / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert _snapshot(faulty) == before and not list((faulty / "artifacts").glob(".boundary_set.*"))
    _assert_up_to_date(faulty)


def test_a_locked_mlflow_database_fails_the_run_clearly_and_the_next_run_recovers(faulty, capsys):
    params = yaml.safe_load((faulty / "params.yaml").read_text())
    params["evaluation"]["knn_k"] = 3
    (faulty / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    before = _snapshot(faulty)
    lock = sqlite3.connect(faulty / "mlflow" / "mlflow.db", timeout=1)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        assert bilaf(["run", "--project", str(faulty)]) == 1
        printed = capsys.readouterr().out
        assert "database is locked" in printed
        event_log = Path(printed.rsplit("Its full event log: ", 1)[1].split()[0])  # named, and it holds the failure
        assert event_log.parent == faulty / ".dagster_home" / "logs" and "STEP_FAILURE" in event_log.read_text()
    finally:
        lock.rollback()
        lock.close()
    assert _snapshot(faulty) == before
    assert "evaluation" in _planned(faulty)  # still to do, for both
    assert bilaf(["run", "--project", str(faulty)]) == 0
    _assert_up_to_date(faulty)
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{faulty / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("bilaf").experiment_id
    assert client.search_runs([experiment], "attributes.status = 'RUNNING'") == []  # none left open


def test_a_copied_project_runs_in_its_own_folder_and_leaves_the_original_untouched(faulty, tmp_path):
    copy_root = tmp_path / "moved"
    shutil.copytree(faulty, copy_root, symlinks=True)
    watched = ["mlflow", ".dagster_home", "artifacts", "rounds", "data", "labels", ".dvc", "dvc.lock"]
    original = {
        name: {
            p.relative_to(faulty).as_posix(): p.stat().st_mtime_ns
            for p in ([faulty / name] if (faulty / name).is_file() else (faulty / name).rglob("*"))
        }
        for name in watched
    }
    params = yaml.safe_load((copy_root / "params.yaml").read_text())
    params["evaluation"]["knn_k"] = 4
    (copy_root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    completed = subprocess.run(
        [str(BIN / "bilaf"), "run", "--project", str(copy_root)],
        cwd=copy_root,
        env=_env(copy_root),
        capture_output=True,
        text=True,
    )
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-2000:]
    for name in watched:
        assert {
            p.relative_to(faulty).as_posix(): p.stat().st_mtime_ns
            for p in ([faulty / name] if (faulty / name).is_file() else (faulty / name).rglob("*"))
        } == original[name], name
    database = sqlite3.connect(copy_root / "mlflow" / "mlflow.db")
    uris = [row[0] for row in database.execute("SELECT artifact_uri FROM runs")]
    assert uris and all(str(copy_root) in uri for uri in uris)


def test_an_unreadable_file_in_the_source_is_reported_everywhere_and_reruns_nothing(tmp_path, capsys):
    from bilaf.features.sources import fashion_mnist_source

    source = fashion_mnist_source()
    chosen = [i for i, record in enumerate(source.records) if record.split == "train"][:150] + [
        i for i, record in enumerate(source.records) if record.split == "test"
    ][:40]
    photos = tmp_path / "photos"
    for index in chosen:
        record = source.records[index]
        folder = photos / record.split / f"class-{record.label}"
        folder.mkdir(parents=True, exist_ok=True)
        source.load(index).save(folder / f"{index}.png")
    (photos / "README.md").write_text("our photos\n")  # beside train/ and test/: ignored, not unreadable
    params = yaml.safe_load((Path(__file__).resolve().parents[3] / "params.yaml").read_text())
    params["data"].update(source="image-folder", root=str(photos), train_size=None, test_size=None)
    params["features"].update(image_size=32, batch_size=64)
    params["core"]["n_cores"] = params["boundary"]["budget"] = 20
    params["finetune"].update(epochs=1, image_size=32, batch_size=10)
    (tmp_path / "project").mkdir()
    root = make_project(tmp_path / "project", params)
    saved = {key: os.environ.get(key) for key in ("DAGSTER_HOME", "BILAF_PROJECT_DIR")}
    os.environ.update(DAGSTER_HOME=str(root / ".dagster_home"), BILAF_PROJECT_DIR=str(root))
    try:
        assert bilaf(["run", "--project", str(root)]) == 0
        assert "unreadable" not in capsys.readouterr().out
        (photos / "train" / "class-0" / "broken.png").write_bytes(b"not a png at all")
        assert "pool" in _planned(root)
        assert bilaf(["run", "--project", str(root)]) == 0
        assert "1 unreadable file(s) skipped in the pool, e.g. folder:" in capsys.readouterr().out
        with dg.DagsterInstance.get() as instance:
            pool = instance.fetch_observations(dg.AssetKey("pool"), limit=1).records[0].asset_observation
            assert pool.metadata["unreadable"].value == 1
            reused = instance.get_latest_materialization_event(dg.AssetKey("core_centers"))
            assert "reused_from_run" in reused.asset_materialization.metadata  # the content did not change
            latest = instance.get_runs(limit=1)[0].run_id
            checks = {
                record.dagster_event.event_specific_data.asset_check_key.name: record.dagster_event.event_specific_data
                for record in instance.all_logs(latest, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
            }
        readable = checks["pool_files_are_readable"]
        assert not readable.passed and readable.severity == dg.AssetCheckSeverity.WARN
        assert "broken.png" in readable.metadata["examples"].value
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow' / 'mlflow.db'}")
        runs = client.search_runs(
            [client.get_experiment_by_name("bilaf").experiment_id],
            "tags.asset_key = 'pool'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        assert runs[0].data.metrics["unreadable"] == 1
        _assert_up_to_date(root)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

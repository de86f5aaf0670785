"""The whole pipeline on a tiny real project: Dagster runs, staleness, DVC agreement, MLflow lineage.

Tests run in file order and build on each other (one materialization of the graph is shared).
"""

import copy
import csv
import json
import os
import re
import subprocess
import time
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import yaml

# Dagster 1.13 has no public API for the stale status its UI shows (these tests check that the UI
# agrees with the planner, so they read it where the UI does); the resolver needs a loading context.
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._core.loader import LoadingContextForTest

from bilaf.stages import STAGES
from dagster_project.cli import main as bilaf
from dagster_project.definitions import build_definitions
from dagster_project.defs.assets import PARAMS_SOURCES, cpu_model
from dagster_project.defs.checks import ASSET_CHECKS
from dagster_project.defs.sensors import refresh_request

from .conftest import BIN, TINY_PARAMS, free_port, run, write_params

ALL_STAGES = set(STAGES)


def _latest_run_materializations(instance: dg.DagsterInstance) -> tuple[str, set[str]]:
    latest = instance.get_runs(limit=1)[0]
    records = instance.all_logs(latest.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
    return latest.run_id, {record.dagster_event.asset_key.to_user_string() for record in records}


def _stale_stages(instance: dg.DagsterInstance, root: Path) -> set[str]:
    graph = build_definitions(str(root)).resolve_asset_graph()
    resolver = CachingStaleStatusResolver(instance, graph, LoadingContextForTest(instance))
    return {name for name in STAGES if resolver.get_status(dg.AssetKey(name)) != StaleStatus.FRESH}


def _evaluation_metrics(root: Path) -> dict:
    """The evaluation stage's metrics.json, checked: every model scored every test item once, and
    each top-1 accuracy is in [0, 1] and is what its confusion matrix says."""
    from bilaf.features import read_manifest

    metrics = json.loads((root / "artifacts" / "evaluation" / "metrics.json").read_text())
    test_items = int((read_manifest(root / "data")["split"] == "test").sum())
    assert metrics["test_items"] == test_items == TINY_PARAMS["data"]["test_size"]
    assert metrics["round"] == 1 and len(metrics["classes"]) == 10
    for model in ("finetuned", "linear_probe", "knn"):
        confusion = np.asarray(metrics[model]["confusion"])
        assert confusion.shape == (10, 10) and confusion.sum() == test_items, model
        assert 0.0 <= metrics[model]["top1"] <= 1.0, model
        assert metrics[model]["top1"] == pytest.approx(np.trace(confusion) / test_items), model
    return metrics


def _dvc_out_hashes(root: Path) -> dict[str, str]:
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    return {name: stage["outs"][0]["md5"] for name, stage in lock["stages"].items()}


def _lines_besides_progress(printed) -> list[str]:
    """What `bilaf run` printed, less the progress lines (`task: 3/12 (25%), ...`): how many of those
    a loop prints depends on the machine's speed (one per 10 s)."""
    progress = re.compile(r"^[^:]+: \d+/\d+ \(\d+%\)")
    return [line for line in (printed.out + printed.err).splitlines() if not progress.match(line)]


def _stage_lines(output: str) -> list[str]:
    """The stages `bilaf run` reported as done, in the order it printed them (`name  12.3 s  what`)."""
    done = re.compile(rf"^({'|'.join(STAGES)}) +\d+\.\d s  \S")
    return [match.group(1) for match in map(done.match, output.splitlines()) if match]


def test_first_run_materializes_every_stage_and_passes_every_check(tiny_project, project_env, capsys):
    assert bilaf(["run", "--project", str(tiny_project)]) == 0
    printed = capsys.readouterr()
    # What a person reads: the plan, one line per stage as it ends, progress, the summary; no Dagster
    # DEBUG lines (they are in the event log file).
    assert sorted(_stage_lines(printed.out)) == sorted(STAGES), printed.out  # each once, in a dependency order
    assert " - DEBUG - " not in printed.out + printed.err
    assert len(_lines_besides_progress(printed)) <= 40, printed.out + printed.err
    with dg.DagsterInstance.get() as instance:
        run_id, materialized = _latest_run_materializations(instance)
        assert materialized == ALL_STAGES
        event_log = (tiny_project / ".dagster_home" / "logs" / f"{run_id}.log").read_text()
        assert all(f" {stage} STEP_SUCCESS " in event_log for stage in STAGES), event_log[-2000:]
        evaluations = instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
        results = {
            record.dagster_event.event_specific_data.asset_check_key.name: record.dagster_event.event_specific_data.passed
            for record in evaluations
        }
        assert len(results) == len(ASSET_CHECKS) and all(results.values()), results
        assert _stale_stages(instance, tiny_project) == set()
        evaluation = instance.get_latest_materialization_event(dg.AssetKey("evaluation")).asset_materialization
    selection = (tiny_project / "artifacts" / "boundary_set" / "selection.csv").read_text().splitlines()
    assert len(selection) == 1 + TINY_PARAMS["boundary"]["budget"]
    metrics = _evaluation_metrics(tiny_project)
    for model in ("finetuned", "linear_probe", "knn"):  # the asset's metadata is what the stage wrote
        assert evaluation.metadata[f"{model}_top1"].value == pytest.approx(metrics[model]["top1"])
    assert metrics["train_items"] == TINY_PARAMS["boundary"]["budget"]  # trained on exactly the labeled picks


def test_explain_tells_why_an_image_was_picked_from_verified_records(tiny_project, project_env, capsys):
    import json

    from bilaf.features import read_manifest

    with open(tiny_project / "artifacts" / "boundary_set" / "selection.csv") as handle:
        rows = list(csv.DictReader(handle))
    boundary = next(row for row in rows if row["role"] == "boundary")
    assert bilaf(["explain", boundary["id"], "--json", "--project", str(tiny_project)]) == 0
    report = json.loads(capsys.readouterr().out)
    (pick,) = report["picked"]
    assert pick["role"] == "boundary" and pick["round"] == 1 and pick["cluster_core"] == boundary["cluster_core"]
    assert pick["rank"] == int(boundary["rank"])  # the recorded pick's own rank and score, not any number
    assert pick["boundary_score"] == pytest.approx(float(boundary["boundary_score"]), rel=1e-12)
    assert pick["rival_core"] in {row["id"] for row in rows if row["role"] == "core"}  # ids, not row numbers
    inputs = pick["inputs"]
    assert inputs["parameters"]["boundary"] == TINY_PARAMS["boundary"]  # typed as written
    assert inputs["pool_dvc_md5"].endswith(".dir") and len(inputs["backbone"]["weights_sha256"]) == 64
    assert inputs["code_version"] == STAGES["boundary_set"].code_version()
    assert inputs["git_code_diff"] == "clean"  # the pipeline's own writes (dvc.lock, .dvc files) are not code
    with dg.DagsterInstance.get() as instance:
        assert inputs["dagster_run_id"] == instance.get_runs(limit=1)[0].run_id
    assert bilaf(["explain", boundary["id"], "--project", str(tiny_project)]) == 0
    assert "round 1" in capsys.readouterr().out

    # An item never picked: the reason follows its recorded `kept` flag (IDC removed it, or it stayed
    # and was outscored); one item of each kind the round has.
    picked = {row["id"] for row in rows}
    denoised = json.loads((tiny_project / "artifacts" / "denoised_pool.json").read_text())
    kept_flag = dict(zip(denoised["ids"], denoised["denoised"]["kept"]))
    unpicked = [
        item for item in read_manifest(tiny_project / "data").query("split == 'train'")["id"] if item not in picked
    ]
    examples = {bool(kept_flag[item]): item for item in unpicked}
    assert set(examples) == {True, False}  # the tiny pool has both kinds (25 of its 300 items are removed)
    for kept, item in examples.items():
        assert bilaf(["explain", item, "--json", "--project", str(tiny_project)]) == 0
        (why,) = json.loads(capsys.readouterr().out)["not_picked"]
        assert why["round"] == 1
        assert ("outscored" in why["why"]) == kept and ("removed as noise" in why["why"]) == (not kept), why


def test_explain_refuses_an_answer_from_a_tampered_record(tiny_project, project_env, capsys):
    logged = next((tiny_project / "mlflow" / "artifacts").rglob("boundary_set/selection.csv"))
    original = logged.read_bytes()
    logged.write_bytes(original.replace(b"boundary", b"core", 1))
    try:
        assert bilaf(["explain", "ffffffffffffffff", "--project", str(tiny_project)]) == 2
        assert "does not match its recorded sha256" in capsys.readouterr().err
    finally:
        logged.write_bytes(original)


def test_a_version_gone_from_the_cache_is_read_from_the_remote_and_one_gone_from_both_is_named(
    tiny_project, project_env, capsys
):
    from dagster_project import dvc

    md5 = _dvc_out_hashes(tiny_project)["boundary_set"]
    name = md5.removesuffix(".dir")
    stored = [
        store / "files" / "md5" / name[:2] / (name[2:] + ".dir")
        for store in (tiny_project / ".dvc" / "cache", tiny_project / ".dvc-storage")
    ]
    assert all(path.is_file() for path in stored)  # every stage pushed its output to the remote
    aside = [path.with_name(path.name + ".aside") for path in stored]
    try:
        stored[0].rename(aside[0])  # as `dvc gc --workspace` would after a later round
        assert bilaf(["explain", "ffffffffffffffff", "--project", str(tiny_project)]) == 0
        capsys.readouterr()
        stored[1].rename(aside[1])  # as `dvc gc --cloud` would
        assert dvc.find_object(tiny_project, md5) is None
        assert bilaf(["explain", "ffffffffffffffff", "--project", str(tiny_project)]) == 2
        assert f"boundary_set version {md5}" in capsys.readouterr().err
    finally:
        for path, moved in zip(stored, aside):
            if moved.exists():
                moved.rename(path)


def test_second_run_with_nothing_changed_does_nothing(tiny_project, project_env, capsys):
    with dg.DagsterInstance.get() as instance:
        before = len(instance.get_runs())
        assert isinstance(
            refresh_request(instance, build_definitions(str(tiny_project)).resources["project"]), dg.SkipReason
        )
    assert bilaf(["run", "--project", str(tiny_project)]) == 0
    assert "up to date" in capsys.readouterr().out
    with dg.DagsterInstance.get() as instance:
        assert len(instance.get_runs()) == before


def test_dvc_agrees_and_reproduces_the_dagster_artifacts_byte_for_byte(tiny_project, project_env):
    status = run([str(BIN / "dvc"), "status"], tiny_project, project_env)
    assert "up to date" in status.stdout, status.stdout
    dagster_hashes = _dvc_out_hashes(tiny_project)
    with dg.DagsterInstance.get() as instance:
        for name, md5 in dagster_hashes.items():  # the Dagster data version is the DVC hash
            event = instance.get_latest_materialization_event(dg.AssetKey(name))
            assert event.asset_materialization.tags["dagster/data_version"] == md5
    run([str(BIN / "dvc"), "repro", "--force"], tiny_project, project_env)
    assert _dvc_out_hashes(tiny_project) == dagster_hashes


def test_changing_the_penalty_reruns_exactly_the_boundary_set_and_what_follows(tiny_project, project_env, capsys):
    params = copy.deepcopy(TINY_PARAMS)
    params["boundary"]["penalty"] = 1.5
    write_params(tiny_project, params)
    expected = {"boundary_set", "annotation_batch", "finetuned_model", "evaluation"}  # here the batch changes

    dvc_changed = run([str(BIN / "dvc"), "status", "--json"], tiny_project, project_env).stdout
    assert set(yaml.safe_load(dvc_changed)) == {"boundary_set"}  # the one stage that reads the penalty

    defs = build_definitions(str(tiny_project))
    with dg.DagsterInstance.get() as instance:  # the sensor asks for exactly this run
        request = refresh_request(instance, defs.resources["project"])
        assert set(request.asset_selection) == {dg.AssetKey(["params", "boundary"])} | {
            dg.AssetKey(name) for name in expected
        }
    with dg.DagsterInstance.get() as instance:  # what the UI shows after "Observe all"
        observation = dg.materialize(
            PARAMS_SOURCES,
            selection=dg.AssetSelection.all(include_sources=True),
            instance=instance,
            resources=defs.resources,
        )
        assert {event.asset_key for event in observation.get_asset_observation_events()} == {
            source.key for source in PARAMS_SOURCES
        }
        assert _stale_stages(instance, tiny_project) == {"boundary_set"}  # as DVC says

    capsys.readouterr()
    assert bilaf(["run", "--project", str(tiny_project)]) == 0
    printed = capsys.readouterr()
    assert set(_stage_lines(printed.out)) == expected, printed.out
    assert len(_lines_besides_progress(printed)) <= 15, printed.out + printed.err
    with dg.DagsterInstance.get() as instance:
        _, materialized = _latest_run_materializations(instance)
        assert materialized == expected
        assert _stale_stages(instance, tiny_project) == set()


def test_invalid_parameters_fail_before_any_compute(tiny_project, project_env, capsys):
    params = copy.deepcopy(TINY_PARAMS)
    params["boundary"]["penalty"] = 0.5
    write_params(tiny_project, params)
    with dg.DagsterInstance.get() as instance:
        before = len(instance.get_runs())
    try:
        assert bilaf(["run", "--project", str(tiny_project)]) == 2
        assert "boundary.penalty must be >= 1" in capsys.readouterr().err
        with dg.DagsterInstance.get() as instance:
            assert len(instance.get_runs()) == before
    finally:
        params["boundary"]["penalty"] = 1.5
        write_params(tiny_project, params)


def test_verbose_also_prints_dagsters_event_log(tiny_project, project_env, capsys):
    params = yaml.safe_load((tiny_project / "params.yaml").read_text())
    params["evaluation"]["knn_k"] = 4
    write_params(tiny_project, params)
    capsys.readouterr()
    assert bilaf(["run", "--verbose", "--project", str(tiny_project)]) == 0
    printed = capsys.readouterr()
    assert _stage_lines(printed.out) == ["evaluation"], printed.out
    assert " - DEBUG - __ASSET_JOB - " in printed.err and "STEP_SUCCESS" in printed.err, printed.err[-2000:]


def test_dagster_cli_string_selection_works_with_dvc_installed(tiny_project, project_env):
    """antlr4: Dagster's selection parser needs 4.13 while DVC's hydra pins 4.9 (separate venvs)."""
    completed = run(
        [str(BIN / "dagster"), "asset", "materialize", "--select", "evaluation*", "-m", "dagster_project.definitions"],
        tiny_project,
        project_env,
    )
    assert "RUN_SUCCESS" in completed.stdout + completed.stderr
    with dg.DagsterInstance.get() as instance:
        run_id, materialized = _latest_run_materializations(instance)
        assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.SUCCESS
    assert materialized == {"evaluation"}


def test_dvc_exp_run_with_a_set_parameter(tiny_project, project_env):
    run(["git", "add", "-A"], tiny_project)
    run(["git", "commit", "-qm", "pipeline outputs"], tiny_project)
    before = _dvc_out_hashes(tiny_project)
    run([str(BIN / "dvc"), "exp", "run", "-S", "evaluation.knn_k=3"], tiny_project, project_env)
    assert yaml.safe_load((tiny_project / "params.yaml").read_text())["evaluation"]["knn_k"] == 3
    lock = yaml.safe_load((tiny_project / "dvc.lock").read_text())["stages"]
    assert lock["evaluation"]["params"]["params.yaml"]["evaluation"]["knn_k"] == 3  # re-ran with k = 3
    after = _dvc_out_hashes(tiny_project)
    assert {name for name, md5 in after.items() if md5 != before[name]} <= {"evaluation"}  # nothing else re-ran
    _evaluation_metrics(tiny_project)  # what it wrote is a whole evaluation of the test split
    write_params(tiny_project, {**TINY_PARAMS, "boundary": {"budget": 40, "penalty": 1.5}})


def test_mlflow_holds_one_parent_run_per_dagster_run_with_nested_asset_runs(tiny_project, project_env):
    import mlflow.pytorch
    import torch

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tiny_project / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("bilaf")
    with dg.DagsterInstance.get() as instance:
        first_run = instance.get_runs()[-1].run_id
    children = client.search_runs([experiment.experiment_id], f"tags.dagster_run_id = '{first_run}'")
    parents = [r for r in children if r.data.tags.get("bilaf_level") == "dagster_run"]
    assets = {r.data.tags["asset_key"]: r for r in children if r.data.tags.get("bilaf_level") == "asset"}
    assert len(parents) == 1 and set(assets) == ALL_STAGES | {"pool"}  # the pool's observation is logged too
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in assets.values())
    boundary = assets["boundary_set"].data
    for key in ("git_commit", "backbone", "data_version", "dvc_md5", "params_hash:boundary", "cpu_capability"):
        assert boundary.tags.get(key), key
    assert boundary.tags["cpu_model"] == cpu_model() != ""  # float bits differ across CPU types (README)
    assert boundary.params["boundary.budget"] == "40"
    assert boundary.metrics["selected"] == 40
    assert parents[0].info.status == "FINISHED" and all(r.info.status == "FINISHED" for r in assets.values())
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert boundary.tags["dagster_run_url"].endswith(f"/runs/{first_run}")  # MLflow -> Dagster
    with dg.DagsterInstance.get() as instance:  # Dagster -> MLflow
        event = instance.get_latest_materialization_event(dg.AssetKey("boundary_set"))
    link = event.asset_materialization.metadata["mlflow_run"].value
    assert link.endswith("?workflowType=machine_learning")  # opens MLflow's training view
    linked = link.removesuffix("?workflowType=machine_learning").rsplit("/", 1)[-1]
    assert client.get_run(linked).data.tags["dagster_run_id"] == event.run_id
    from bilaf.features import pool_version

    for stage in ("embeddings", "core_centers", "denoised_pool", "boundary_set"):  # what each chose from
        (dataset,) = [entry.dataset for entry in client.get_run(assets[stage].info.run_id).inputs.dataset_inputs]
        assert dataset.name == "pool" and dataset.digest == pool_version(tiny_project / "data"), stage
    finetune_run = assets["finetuned_model"].info.run_id
    (version,) = client.search_model_versions(f"name = 'bilaf-finetuned' and run_id = '{finetune_run}'")
    assert version.tags["round"] == "1"
    assert not mlflow.is_tracking_uri_set()  # the pipeline left the fluent URI unset (no ./mlflow.db)
    mlflow.set_tracking_uri(client.tracking_uri)  # the models:/ URI resolves through the fluent store
    try:
        logged = mlflow.pytorch.load_model(f"models:/bilaf-finetuned/{version.version}")
    finally:
        mlflow.set_tracking_uri(None)
    image_size = TINY_PARAMS["finetune"]["image_size"]
    assert tuple(logged(torch.zeros(1, 3, image_size, image_size)).shape) == (1, 10)


def test_logging_to_a_real_mlflow_server(tiny_project, project_env, tmp_path):
    port = free_port()
    server = subprocess.Popen(
        [
            str(BIN / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--default-artifact-root",
            str(tmp_path / "server-artifacts"),
        ],
        env=project_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        import requests

        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                if requests.get(f"{uri}/health", timeout=5).ok:
                    break
            except requests.RequestException:  # not listening yet, or too busy starting to answer
                time.sleep(1)
        else:
            pytest.fail(f"mlflow server did not answer {uri}/health within 300 s")
        params = {**TINY_PARAMS, "boundary": {"budget": 40, "penalty": 1.5}, "evaluation": {"knn_k": 7}}
        write_params(tiny_project, params)
        os.environ["MLFLOW_TRACKING_URI"] = uri
        try:
            assert bilaf(["run", "--project", str(tiny_project)]) == 0
        finally:
            os.environ.pop("MLFLOW_TRACKING_URI")
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=uri)
        runs = client.search_runs(
            [client.get_experiment_by_name("bilaf").experiment_id], "tags.asset_key = 'evaluation'"
        )
        assert len(runs) == 1 and runs[0].data.params["evaluation.knn_k"] == "7"
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


def test_a_penalty_change_that_leaves_the_batch_alone_stops_at_the_batch(tiny_project, project_env, capsys):
    """Every pick a core (core.n_cores = budget): the penalty cannot change the batch. Only
    boundary_set depends on the penalty (DVC and the UI's stale status say so); the run re-selects,
    re-issues a byte-identical batch and carries the model and its evaluation over: no training, no
    new model version, and nothing stale after."""
    import mlflow

    params = {**TINY_PARAMS, "core": {**TINY_PARAMS["core"], "n_cores": 40}, "boundary": {"budget": 40, "penalty": 1.5}}
    write_params(tiny_project, params)
    assert bilaf(["run", "--project", str(tiny_project)]) == 0
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tiny_project / 'mlflow' / 'mlflow.db'}")
    versions = len(client.search_model_versions("name = 'bilaf-finetuned'"))
    batch = (tiny_project / "artifacts" / "annotation_batch" / "to_annotate.csv").read_bytes()

    write_params(tiny_project, {**params, "boundary": {"budget": 40, "penalty": 1.2}})
    dvc_changed = run([str(BIN / "dvc"), "status", "--json"], tiny_project, project_env).stdout
    assert set(yaml.safe_load(dvc_changed)) == {"boundary_set"}
    capsys.readouterr()
    assert bilaf(["run", "--project", str(tiny_project)]) == 0
    printed = capsys.readouterr().out
    assert _stage_lines(printed) == ["boundary_set", "annotation_batch", "finetuned_model", "evaluation"], printed
    carried = [line for line in printed.splitlines() if "reused, not recomputed" in line]
    assert [line.split()[0] for line in carried] == ["finetuned_model", "evaluation"], printed
    assert (tiny_project / "artifacts" / "annotation_batch" / "to_annotate.csv").read_bytes() == batch
    assert len(client.search_model_versions("name = 'bilaf-finetuned'")) == versions
    assert "up to date" in run([str(BIN / "dvc"), "status"], tiny_project, project_env).stdout
    with dg.DagsterInstance.get() as instance:
        assert _stale_stages(instance, tiny_project) == set()

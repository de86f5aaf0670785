"""A team's deployment, every service real and started from nothing as `make team-up` starts them:
Postgres (Dagster's storage, MLflow's backend), a SeaweedFS S3 store (the DVC remote, MLflow's
artifacts, the embedding cache), an MLflow server, the Dagster webserver and daemon.

The tests run in order on one project: the sensor under the real daemon, the run queue, lineage
read back from the shared stores alone, and each service failing under a run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import yaml

from bilaf.features import read_manifest
from dagster_project.team import (
    check_services,
    running,
    service_environment,
    start_team,
    stop_refresh_sensor,
    stop_service,
    stop_team,
)

from .conftest import BIN, TINY_PARAMS, make_project, run, write_params

pytestmark = [pytest.mark.heavy, pytest.mark.timeout(1800)]

SENSOR_INTERVAL_S = 5
PARAMS = {**TINY_PARAMS, "annotation": {"labels": "imported"}}  # round 1 waits for labels: no training


@pytest.fixture(scope="module")
def team():
    """A tiny project and its team services; this process uses them as a sourced team.env would.

    Not under pytest's temporary folder: pytest makes it private (0700) at every session start, and
    Postgres, run as the `postgres` account when the tests run as root, must keep reaching its data."""
    base = Path(tempfile.mkdtemp(prefix="bilaf-team-test-"))
    base.chmod(0o711)
    root = base / "project"
    root.mkdir()
    root.chmod(0o711)
    make_project(root, PARAMS)
    (root / ".gitignore").write_text((root / ".gitignore").read_text() + "/.team/\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BILAF_SENSOR_INTERVAL_S", str(SENSOR_INTERVAL_S))
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("BILAF_PROJECT_DIR", str(root))
        patch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
        try:  # also when a service fails to start: what did start is stopped
            started_at = time.monotonic()
            services = start_team(root, cluster=False)
            services_started_s = time.monotonic() - started_at
            for key, value in service_environment(services.folder, services.ports, cluster=False).items():
                patch.setenv(key, value)
            yield {"root": root, "services": services, "startup_s": services_started_s}
        finally:
            stop_team(root / ".team")
            shutil.rmtree(base, ignore_errors=True)


def _bilaf(team, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run([str(BIN / "bilaf"), *args], team["root"], env=os.environ.copy(), check=check)


def _runs() -> list[dg.DagsterRun]:
    with dg.DagsterInstance.get() as instance:
        return [record.dagster_run for record in instance.get_run_records()][::-1]  # oldest first


def _wait(predicate, timeout_s: float, what: str, interval_s: float = 2.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}; runs: {_describe(_runs())}")


def _describe(runs) -> str:
    return ", ".join(f"{run.run_id[:8]} {run.status.value} {run.tags.get('bilaf/trigger')}" for run in runs)


def _all_finished(count: int):
    def finished():
        runs = _runs()
        return len(runs) >= count and all(run.is_finished for run in runs) and runs

    return finished


def _sensor_evaluations(team) -> int:
    """Evaluations of the refresh sensor the daemon has finished (a skip or a launch)."""
    log = (team["services"].folder / "dagster-daemon.log").read_text(errors="replace")
    return len(re.findall(r"Sensor refresh_sensor skipped|Completed launch of run \S+ for refresh_sensor", log))


def _quiet_for_two_ticks(team) -> None:
    """Two more evaluations of the refresh sensor by the daemon."""
    seen = _sensor_evaluations(team)
    _wait(lambda: _sensor_evaluations(team) >= seen + 2, 20 * SENSOR_INTERVAL_S, "two sensor ticks", 1.0)


def _never_overlapping(runs) -> None:
    with dg.DagsterInstance.get() as instance:
        records = [instance.get_run_record_by_id(run.run_id) for run in runs]
    spans = sorted((record.start_time, record.end_time) for record in records if record.start_time)
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert end <= start, f"two runs were in progress at once: {spans}"


def test_team_up_from_nothing_writes_no_secret_and_binds_loopback_only(team):
    folder = team["services"].folder
    assert set(running(folder)) == {"postgres", "objects", "mlflow", "dagster", "dagster-daemon"}
    secrets = _secrets(folder)
    assert len(secrets) == 3 and all(len(secret) >= 16 for secret in secrets)
    assert all(oct(path.stat().st_mode)[-3:] == "600" for path in (folder / "secrets").iterdir())
    readable = [folder / "team.env", folder / "dagster_home" / "dagster.yaml", team["root"] / ".dvc" / "config.local"]
    readable += list(folder.glob("*.log"))
    for path in readable:
        text = path.read_text(errors="replace")
        assert not any(secret in text for secret in secrets), f"a credential is written in {path}"
    listening = _listening()
    ports = set(team["services"].ports.values())
    ours = {port: hosts for port, hosts in listening.items() if port in ports}
    assert len(ours) >= len(ports) - 1, (ours, ports)  # every service answers (one gRPC port may be unused)
    assert all(hosts == {"127.0.0.1"} for hosts in ours.values()), ours


def _secrets(folder: Path) -> list[str]:
    """The Postgres password and the S3 key pair `team up` generated."""
    return [
        *(folder / "secrets" / "postgres-password").read_text().split(),
        *re.findall(r"= (\S+)", (folder / "secrets" / "aws-credentials").read_text()),
    ]


def _listening() -> dict[int, set[str]]:
    """Listening TCP port -> local addresses, from /proc/net/tcp{,6} (no tool needed)."""
    found: dict[int, set[str]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state != "0A":  # LISTEN
                continue
            address, port = local.split(":")
            host = ".".join(str(int(address[i : i + 2], 16)) for i in (6, 4, 2, 0)) if len(address) == 8 else address
            found.setdefault(int(port, 16), set()).add(host)
    return found


def test_sensor_under_the_real_daemon_launches_one_run_per_change(team):
    """The pool and params are new: the daemon launches one run; a second tick none. A penalty
    change: one more run, and none while it is queued or running. New labels: one run of round 2."""
    root = team["root"]
    runs = _wait(_all_finished(1), 600, "the sensor's first run")
    assert [run.status for run in runs] == [dg.DagsterRunStatus.SUCCESS], _describe(runs)
    assert runs[0].tags["bilaf/trigger"] == "refresh"
    _quiet_for_two_ticks(team)
    assert len(_runs()) == 1

    params = yaml.safe_load((root / "params.yaml").read_text())
    params["boundary"]["penalty"] = 1.3
    write_params(root, params)
    runs = _wait(_all_finished(2), 600, "the run of the penalty change")
    assert len(runs) == 2 and runs[1].status == dg.DagsterRunStatus.SUCCESS, _describe(runs)
    assert "boundary_set" in runs[1].tags["bilaf/stages"] and "embeddings" not in runs[1].tags["bilaf/stages"]
    _quiet_for_two_ticks(team)
    assert len(_runs()) == 2

    batch = pd.read_csv(root / "artifacts" / "annotation_batch" / "to_annotate.csv", dtype={"id": str})["id"]
    manifest = read_manifest(root / "data").set_index("id")
    answers = root.parent / "round-1-answers.csv"
    pd.DataFrame({"id": batch, "label": manifest.loc[batch, "class_name"].to_numpy()}).to_csv(answers, index=False)
    _bilaf(team, "labels", "import", str(answers), "--round", "1")
    runs = _wait(_all_finished(3), 900, "the run of the new labels")
    assert len(runs) == 3 and runs[2].status == dg.DagsterRunStatus.SUCCESS, _describe(runs)
    assert runs[2].tags["bilaf/round"] == "2"
    _quiet_for_two_ticks(team)
    assert len(_runs()) == 3
    _never_overlapping(_runs())
    assert "Everything is up to date" in _bilaf(team, "run").stdout


def test_two_runs_requested_at_once_are_queued_not_concurrent(team):
    from dagster_graphql import DagsterGraphQLClient

    root = team["root"]
    stop_refresh_sensor(root, os.environ.copy())
    before = len(_runs())
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["evaluation"]["knn_k"] = 7
    write_params(root, params)
    queued = _bilaf(team, "run", "--queue").stdout
    assert "Queued run" in queued and "evaluation (params/evaluation changed)" in queued
    client = DagsterGraphQLClient("127.0.0.1", port_number=team["services"].ports["dagster"])
    client.submit_job_execution("__ASSET_JOB", asset_selection=[dg.AssetKey("evaluation")], tags={"test": "second"})
    refused = _bilaf(team, "run", check=False)  # while those are queued or running: refused, naming one
    assert refused.returncode == 2 and "of this project is" in refused.stderr and "wait for it" in refused.stderr
    waiting_seen = []

    def one_running_one_queued():
        runs = _runs()[before:]
        statuses = {run.status for run in runs}
        if dg.DagsterRunStatus.STARTED in statuses and dg.DagsterRunStatus.QUEUED in statuses:
            waiting_seen.append(True)
        assert sum(run.status == dg.DagsterRunStatus.STARTED for run in runs) <= 1, _describe(runs)
        return len(runs) == 2 and all(run.is_finished for run in runs)

    _wait(one_running_one_queued, 600, "both queued runs", interval_s=0.5)
    runs = _runs()[before:]
    assert [run.status for run in runs] == [dg.DagsterRunStatus.SUCCESS] * 2, _describe(runs)
    assert waiting_seen, "the second run was never held in the queue while the first ran"
    _never_overlapping(runs)
    latest = _mlflow_runs("tags.asset_key = 'evaluation' and attributes.status = 'FINISHED'")[0]
    assert latest.data.params["evaluation.knn_k"] == "7"  # the queued runs evaluated the new parameters


def test_lineage_is_read_from_the_shared_stores_alone(team):
    """With the local DVC cache wiped (and no local MLflow folder), `bilaf explain` and `bilaf
    reproduce` answer from Postgres and the object store and verify every pointer."""
    root = team["root"]
    assert not (root / "mlflow").exists()
    first_round = pd.read_csv(root / "rounds" / "round-001" / "batch.csv", dtype={"id": str})["id"][0]
    shutil.rmtree(root / ".dvc" / "cache")
    report = json.loads(_bilaf(team, "explain", first_round, "--json").stdout)
    assert report["picked"] and report["picked"][0]["round"] == 1
    assert any((root / ".dvc" / "cache").rglob("*.dir"))  # the versions it verified came from the object store
    shutil.rmtree(root / ".dvc" / "cache", ignore_errors=True)
    run_id = report["picked"][-1]["inputs"]["mlflow_run_id"]
    reproduced = _bilaf(team, "reproduce", run_id)
    assert "identical" in reproduced.stdout and "Downloading artifacts" not in reproduced.stdout + reproduced.stderr
    secrets = _secrets(team["services"].folder)
    for recorded in _mlflow_runs(""):
        values = [*recorded.data.params.values(), *recorded.data.tags.values()]
        assert not any(secret in value for secret in secrets for value in values), recorded.info.run_id


def _change(team, section: str, key: str, value) -> None:
    params = yaml.safe_load((team["root"] / "params.yaml").read_text())
    params[section][key] = value
    write_params(team["root"], params)


def _bilaf_run_stopping(team, service: str, once=lambda: True) -> subprocess.CompletedProcess:
    """`bilaf run` with ``service`` stopped once the run is planned (after every pre-run check) and
    ``once()`` holds."""
    process = subprocess.Popen(
        [str(BIN / "bilaf"), "run"],
        cwd=team["root"],
        env=os.environ.copy(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = []

    def stop_when_ready():
        while process.poll() is None and not once():
            time.sleep(0.1)
        stop_service(team["services"].folder, service)

    def watch():
        stopper = None
        for line in process.stdout:
            lines.append(line)
            if line.startswith("Round ") and stopper is None:
                stopper = threading.Thread(target=stop_when_ready)
                stopper.start()
        if stopper is not None:
            stopper.join()

    watcher = threading.Thread(target=watch)
    watcher.start()
    stderr = process.stderr.read()
    process.wait(600)
    watcher.join()
    return subprocess.CompletedProcess(process.args, process.returncode, "".join(lines), stderr)


def _mlflow_runs(query: str) -> list:
    from dagster_project.defs.tracking import EXPERIMENT_NAME, tracking_client

    client = tracking_client(os.environ["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    return client.search_runs([experiment.experiment_id], query)


def test_a_service_that_is_down_is_named_before_any_work(team):
    folder, root = team["services"].folder, team["root"]
    _change(team, "evaluation", "knn_k", 9)
    for service, named in (("postgres", "Postgres"), ("mlflow", "MLflow server"), ("objects", "object store")):
        stop_service(folder, service)
        before = dict(os.environ)
        refused = _bilaf(team, "run", check=False)
        assert refused.returncode == 2 and named in refused.stderr and "127.0.0.1:" in refused.stderr, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
        with pytest.raises(Exception, match=named):
            check_services(root, before["MLFLOW_TRACKING_URI"])
        start_team(root, folder, cluster=False)  # Postgres restarted while idle: the next run works
    result = _bilaf(team, "run")
    assert "succeeded" in result.stdout


def test_object_store_stopped_during_a_push_then_the_next_run_pushes_it(team):
    folder, root = team["services"].folder, team["root"]
    _change(team, "evaluation", "knn_k", 11)
    failed = _bilaf_run_stopping(team, "objects")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "DVC push of evaluation to remote 'team'" in failed.stdout and "the next run pushes it" in failed.stdout
    start_team(root, folder, cluster=False)
    again = _bilaf(team, "run")
    assert "Pushed evaluation to the DVC remote (an earlier push had failed)." in again.stdout
    assert "succeeded" in again.stdout
    status = run([str(BIN / "dvc"), "status", "-c", "-r", "team", "--json"], root, env=os.environ.copy())
    states = json.loads(status.stdout or "{}")  # {path: "new" | "deleted" | "missing"}
    assert all(isinstance(state, str) for state in states.values()) and "new" not in states.values(), (
        states
    )  # nothing in the cache is missing from the remote


def test_mlflow_stopped_mid_run_fails_the_run_and_the_next_run_closes_it(team):
    folder, root = team["services"].folder, team["root"]
    _change(team, "evaluation", "knn_k", 13)
    # Stopped while the evaluation step's MLflow run is open.
    failed = _bilaf_run_stopping(
        team, "mlflow", lambda: _mlflow_runs("tags.asset_key = 'evaluation' and attributes.status = 'RUNNING'")
    )
    assert failed.returncode == 1, failed.stdout + failed.stderr
    address = os.environ["MLFLOW_TRACKING_URI"].removeprefix("http://")
    assert address in failed.stdout, failed.stdout
    dagster_run = _runs()[-1]
    assert dagster_run.status == dg.DagsterRunStatus.FAILURE
    start_team(root, folder, cluster=False)
    again = _bilaf(team, "run")
    assert f"Run {dagster_run.run_id}: its MLflow runs were still open, now ended FAILED" in again.stdout
    closed = _mlflow_runs(f"tags.dagster_run_id = '{dagster_run.run_id}'")
    assert len(closed) == 2 and {run.info.status for run in closed} == {"FAILED"}  # the parent and evaluation

"""The heavy work on a real Dask cluster: a `dask scheduler` and `dask worker` processes on
127.0.0.1 (started as `make cluster` starts them), never a LocalCluster inside this process.

Everything must come out byte for byte as in one process: the embeddings, the selection, and
every output after them; a worker killed mid-task changes nothing.
"""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from bilaf.compute import DaskCompute, LocalCompute, Task, TaskLostError
from bilaf.features.embeddings import ShardCache
from bilaf.progress import reporting_progress
from bilaf.selection import select, select_cores
from bilaf.selection.shards import FeatureRows
from dagster_project.cluster import start_cluster, stop_cluster

from .conftest import BIN, TINY_PARAMS, free_port, make_project, run

POOL = {"train_size": 2000, "test_size": 200}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A scheduler and 2 single-threaded workers, as `bilaf cluster up` starts them."""
    folder = tmp_path_factory.mktemp("cluster")
    started = start_cluster(folder, workers=2, threads=1, memory_limit="4GiB")
    yield started
    stop_cluster(folder)


@pytest.fixture(scope="module")
def one_worker(tmp_path_factory):
    folder = tmp_path_factory.mktemp("one-worker")
    started = start_cluster(folder, workers=1, threads=1, memory_limit="4GiB")
    yield started
    stop_cluster(folder)


def _params(scheduler: str = "local") -> dict:
    params = copy.deepcopy(TINY_PARAMS)
    params["data"].update(POOL)
    params["compute"] = {"scheduler": scheduler, "embedding_cache": None}
    return params


def _env(root: Path) -> dict:
    return {
        **os.environ,
        "DAGSTER_HOME": str(root / ".dagster_home"),
        "BILAF_PROJECT_DIR": str(root),
        "HF_HUB_OFFLINE": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def _bilaf_run(root: Path) -> subprocess.CompletedProcess:
    (root / ".dagster_home").mkdir(exist_ok=True)
    return run([str(BIN / "bilaf"), "run"], root, env=_env(root))


def _outputs(root: Path) -> dict[str, bytes]:
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for folder in ("artifacts", "rounds")
        for path in sorted((root / folder).rglob("*"))
        if path.is_file()
    }


def _worker_pids(cluster) -> dict[str, int]:
    from distributed import Client

    with Client(scheduler_file=str(cluster.scheduler_file), timeout=10, set_as_default=False) as client:
        return client.run(os.getpid)


@pytest.fixture(scope="module")
def in_process_project(tmp_path_factory) -> Path:
    root = make_project(tmp_path_factory.mktemp("in-process"), _params())
    _bilaf_run(root)
    return root


@pytest.mark.heavy
def test_bilaf_run_on_the_cluster_writes_the_in_process_bytes(in_process_project, cluster, tmp_path):
    root = make_project(tmp_path, _params(str(cluster.scheduler_file)))
    _bilaf_run(root)
    expected, got = _outputs(in_process_project), _outputs(root)
    assert "artifacts/embeddings/features.npy" in got and "artifacts/boundary_set/selection.csv" in got
    assert sorted(got) == sorted(expected)
    assert [name for name in got if got[name] != expected[name]] == []
    cache = next((root / ".cache" / "embeddings").iterdir())
    shards = ShardCache(cache)
    computed_by = {(shards.provenance(name)["host"], shards.provenance(name)["pid"]) for name in shards.shards()}
    assert len(computed_by) >= 2 and os.getpid() not in {pid for _, pid in computed_by}
    assert all(shards.provenance(name)["worker"] for name in shards.shards())
    os.environ["DAGSTER_HOME"] = str(root / ".dagster_home")
    with dg.DagsterInstance.get() as instance:
        for stage in ("embeddings", "core_centers", "denoised_pool", "boundary_set"):
            metadata = instance.get_latest_materialization_event(dg.AssetKey(stage)).asset_materialization.metadata
            assert metadata["compute_scheduler"].value == str(cluster.scheduler_file), stage
            assert metadata["compute_workers"].value == "2", stage
            assert metadata["compute_dashboard"].value.startswith("http://127.0.0.1:"), stage


CASES = {
    "activeft, K = B": dict(method="activeft"),
    "bilaf, K < B": dict(method="bilaf", n_cores=15),
    "activeft around labeled and pending": dict(method="activeft", known="anchors"),
    "bilaf around labeled and pending": dict(method="bilaf", n_cores=15, known="anchors"),
    "label-aware bilaf with cores": dict(method="bilaf", n_cores=10, known="classes"),
}


def _known(kind: str, n_items: int) -> dict:
    rng = np.random.default_rng(7)
    labels = np.full(n_items, -1)
    labeled = rng.choice(n_items, 60, replace=False)
    labels[labeled] = rng.integers(0, 4, 60) if kind == "classes" else 0
    return {"labels": labels, "pending": np.setdiff1d(np.arange(n_items), labeled)[:30]}


@pytest.mark.heavy
@pytest.mark.parametrize("case", list(CASES))
def test_picks_are_the_same_in_process_on_one_worker_and_on_two(cluster, one_worker, tmp_path, case):
    rng = np.random.default_rng(0)
    means = rng.normal(size=(12, 32)) * 2.5
    features = (means[rng.integers(12, size=5000)] + rng.normal(size=(5000, 32))).astype(np.float32)
    np.save(tmp_path / "features.npy", features)
    source = FeatureRows.of_file(tmp_path / "features.npy")
    options = dict(CASES[case])
    known = _known(options.pop("known"), len(features)) if "known" in options else {}

    def picks(compute) -> list[int]:
        return list(select(source, 60, seed=2, n_iterations=60, compute=compute, **options, **known).indices)

    expected = picks(LocalCompute())
    for started in (one_worker, cluster):
        compute = DaskCompute(str(started.scheduler_file))
        try:
            assert picks(compute) == expected, started.folder
        finally:
            compute.close()


@pytest.mark.heavy
def test_a_worker_killed_while_embedding_changes_nothing(in_process_project, cluster, tmp_path):
    """kill -9 of a worker in the middle: its shard is embedded again elsewhere, the run succeeds
    with the in-process bytes, and every shard left in the cache reads whole."""
    data = in_process_project / "data"
    command = [str(BIN / "bilaf"), "embed", "--data", str(data), "--image-size", "48", "--shard-size", "64"]
    run([*command, "--out", str(tmp_path / "here"), "--cache-dir", str(tmp_path / "cache-here")], tmp_path)
    cache = tmp_path / "cache-cluster"
    embedding = subprocess.Popen(
        [*command, "--out", str(tmp_path / "there"), "--cache-dir", str(cache)],
        cwd=tmp_path,
        env={**os.environ, "BILAF_DASK_SCHEDULER": str(cluster.scheduler_file)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 300
    while len(list(cache.rglob("shard-*.npz"))) < 3:  # well under way (35 shards in all)
        assert embedding.poll() is None, embedding.stdout.read()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    victim = sorted(_worker_pids(cluster).values())[0]
    os.kill(victim, signal.SIGKILL)
    output, _ = embedding.communicate(timeout=600)
    assert embedding.returncode == 0, output
    for name in ("features.npy", "index.csv", "meta.json"):
        assert (tmp_path / "there" / name).read_bytes() == (tmp_path / "here" / name).read_bytes(), name
    shards = ShardCache(next(cache.iterdir()))
    for name in shards.shards():
        ids, features = shards.read(name)
        assert features.shape == (len(ids), 1280)
    assert not list(cache.rglob("*.tmp-*")) and not list(cache.rglob("*.corrupt"))
    assert victim not in _worker_pids(cluster).values()  # the nanny restarted the worker
    assert len(_worker_pids(cluster)) == 2


@pytest.mark.heavy
def test_a_worker_killed_during_activeft_changes_no_pick(cluster, tmp_path):
    """kill -9 of a worker between iterations: its shards (and their owner bounds) are rebuilt on
    another worker; the picks and the loss are the in-process ones, bit for bit."""
    rng = np.random.default_rng(1)
    features = rng.normal(size=(20_000, 48)).astype(np.float32)
    np.save(tmp_path / "features.npy", features)
    source = FeatureRows.of_file(tmp_path / "features.npy")
    options = dict(n_iterations=120, seed=0)
    expected = select_cores(source, 40, "activeft", **options)
    compute = DaskCompute(str(cluster.scheduler_file))
    iterations: list[int] = []
    outcome: dict = {}

    def selection() -> None:
        with reporting_progress(lambda event: iterations.append(event.done) if event.task == "ActiveFT" else None):
            try:
                outcome["cores"] = select_cores(source, 40, "activeft", compute=compute, **options)
            except BaseException as error:  # reported below
                outcome["error"] = error

    worker = threading.Thread(target=selection)
    worker.start()
    deadline = time.monotonic() + 300
    while not iterations or iterations[-1] < 20:
        assert worker.is_alive(), outcome
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(sorted(_worker_pids(cluster).values())[-1], signal.SIGKILL)
    worker.join(timeout=600)
    compute.close()
    assert "error" not in outcome, outcome.get("error")
    assert iterations[-1] == 120
    assert outcome["cores"].indices.tolist() == expected.indices.tolist()
    assert outcome["cores"].params["final_loss"] == expected.params["final_loss"]


@pytest.mark.heavy
def test_a_task_whose_worker_keeps_dying_is_named_with_the_memory_it_needs(tmp_path):
    started = start_cluster(tmp_path / "small", workers=1, threads=1, memory_limit="300MiB")
    try:
        compute = DaskCompute(str(started.scheduler_file))
        # 1,200 MiB held by a worker allowed 300: its nanny kills it, the task is retried, then given up.
        task = Task("activeft-step-7", np.ones, (1200 * 2**20, np.uint8), memory_bytes=1200 * 2**20)
        with pytest.raises(
            TaskLostError, match=r"task activeft-step-7 was lost .*needs about 1,200 MiB.*out of memory"
        ):
            compute.map([task])
        compute.close()
    finally:
        stop_cluster(tmp_path / "small")


def test_an_unreachable_scheduler_is_refused_before_any_work(tmp_path):
    address = f"tcp://127.0.0.1:{free_port()}"
    params = _params(address)
    params["data"].update(train_size=300, test_size=100)
    root = make_project(tmp_path, params)
    (root / ".dagster_home").mkdir()
    completed = run([str(BIN / "bilaf"), "run"], root, env=_env(root), check=False)
    assert completed.returncode == 2
    assert completed.stderr.strip().count("\n") == 0
    assert f"cannot reach the Dask scheduler at {address}" in completed.stderr
    assert not (root / "data").exists() and not (root / "artifacts").exists()
    assert not list((root / ".dagster_home").glob("storage/*"))  # no Dagster run was even created
    for env in ({"BILAF_DASK_SCHEDULER": address}, {}):
        stage = run([str(BIN / "bilaf"), "stage", "embeddings"], root, env={**_env(root), **env}, check=False)
        assert stage.returncode == 2 and address in stage.stderr

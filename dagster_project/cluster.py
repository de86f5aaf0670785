"""A Dask cluster on this machine for trying the scale-out on one box (`make cluster`), and for
the tests: a real `dask scheduler` and `dask worker` processes, bound to 127.0.0.1, their PIDs and
the scheduler file in one folder, stopped by PID.

A real deployment starts the same two commands on its own machines (over SSH, SLURM/PBS with
dask-jobqueue, Kubernetes with dask-kubernetes) and points `compute.scheduler` at the scheduler.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bilaf.errors import InvalidInputError

DEFAULT_FOLDER = ".cluster"  # also the command line's default (dagster_project.cli.cluster)
SCHEDULER_FILE = "scheduler.json"
_PIDS = "pids.json"


@dataclass(frozen=True)
class ClusterProcesses:
    """A started cluster: the scheduler file to point `compute.scheduler` at, and its processes."""

    folder: Path
    scheduler_pid: int
    worker_pid: int
    address: str
    dashboard: str

    @property
    def scheduler_file(self) -> Path:
        return self.folder / SCHEDULER_FILE


def _dask() -> str:
    return str(Path(sys.executable).with_name("dask"))


def start_cluster(
    folder: Path,
    workers: int = 2,
    threads: int = 1,
    memory_limit: str = "auto",
    host: str = "127.0.0.1",
    timeout_s: float = 60.0,
    env: dict[str, str] | None = None,
) -> ClusterProcesses:
    """Start a scheduler and ``workers`` worker processes (``threads`` each) on ``host``; return once
    every worker has registered. Logs go to ``folder``/scheduler.log and workers.log."""
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    if running(folder) is not None:
        raise InvalidInputError(f"a cluster of {folder} is already running (stop it with `bilaf cluster down`)")
    scheduler_file = folder / SCHEDULER_FILE
    scheduler_file.unlink(missing_ok=True)
    environment = {**os.environ, **(env or {})}
    with open(folder / "scheduler.log", "ab") as log:
        scheduler = subprocess.Popen(
            [
                _dask(),
                "scheduler",
                "--host",
                host,
                "--port",
                "0",
                "--dashboard-address",
                f"{host}:0",
                "--scheduler-file",
                str(scheduler_file),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=environment,
        )
    _wait(lambda: scheduler_file.is_file() and scheduler_file.stat().st_size > 0, timeout_s, scheduler, "scheduler")
    with open(folder / "workers.log", "ab") as log:
        worker = subprocess.Popen(
            [
                _dask(),
                "worker",
                "--scheduler-file",
                str(scheduler_file),
                "--nworkers",
                str(workers),
                "--nthreads",
                str(threads),
                "--memory-limit",
                memory_limit,
                "--host",
                host,
                "--dashboard-address",
                f"{host}:0",
                "--local-directory",
                str(folder / "workers"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=environment,
        )
    info = json.loads(scheduler_file.read_text())
    (folder / _PIDS).write_text(json.dumps({"scheduler": scheduler.pid, "workers": worker.pid}))
    try:
        _wait_for_workers(scheduler_file, workers, timeout_s, worker)
    except BaseException:
        stop_cluster(folder)
        raise
    dashboard = f"http://{host}:{info.get('services', {}).get('dashboard', '')}/status"
    return ClusterProcesses(folder, scheduler.pid, worker.pid, info["address"], dashboard)


def _wait(ready, timeout_s: float, process: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if process.poll() is not None:
            raise InvalidInputError(f"the Dask {what} exited ({process.returncode}) while starting")
        if time.monotonic() > deadline:
            raise InvalidInputError(f"the Dask {what} did not start within {timeout_s:g} s")
        time.sleep(0.1)


def _wait_for_workers(scheduler_file: Path, count: int, timeout_s: float, process: subprocess.Popen) -> None:
    from distributed import Client

    with Client(scheduler_file=str(scheduler_file), timeout=timeout_s, set_as_default=False) as client:
        deadline = time.monotonic() + timeout_s
        while len(client.scheduler_info(n_workers=-1)["workers"]) < count:
            if process.poll() is not None:
                raise InvalidInputError(f"the Dask workers exited ({process.returncode}) while starting")
            if time.monotonic() > deadline:
                raise InvalidInputError(f"{count} Dask workers did not register within {timeout_s:g} s")
            time.sleep(0.2)


def running(folder: Path) -> dict[str, int] | None:
    """The PIDs of the cluster started in ``folder`` that still run, None if none does."""
    pids_file = Path(folder) / _PIDS
    if not pids_file.is_file():
        return None
    pids = json.loads(pids_file.read_text())
    alive = {name: pid for name, pid in pids.items() if process_alive(pid)}
    return alive or None


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a child of this process that exited is reaped, not 'alive')."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:  # not this process's child
        return True


def stop_process_group(pid: int, timeout_s: float = 20.0) -> bool:
    """SIGTERM the process group led by ``pid``, SIGKILL what is left of it after ``timeout_s``/2
    (a child such as the Dagster daemon's code server can outlive its leader); False if ``pid`` was
    not running."""
    if not process_alive(pid):
        return False
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + timeout_s / 2
        while _group_alive(pid) and time.monotonic() < deadline:
            process_alive(pid)  # reaps the leader if it is this process's child
            time.sleep(0.1)
        if not _group_alive(pid):
            break
    return True


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_cluster(folder: Path, timeout_s: float = 20.0) -> list[str]:
    """Stop the cluster of ``folder`` (workers first), each process group by PID; what was stopped."""
    folder = Path(folder)
    pids_file = folder / _PIDS
    if not pids_file.is_file():
        return []
    stopped = []
    for name, pid in sorted(json.loads(pids_file.read_text()).items(), key=lambda item: item[0] != "workers"):
        if stop_process_group(pid, timeout_s):
            stopped.append(f"{name} (pid {pid})")
    pids_file.unlink(missing_ok=True)
    (folder / SCHEDULER_FILE).unlink(missing_ok=True)
    return stopped


def status(folder: Path) -> str:
    """One line per process of the cluster of ``folder``, and its workers as the scheduler sees them."""
    folder = Path(folder)
    alive = running(folder)
    if alive is None:
        return f"no cluster running from {folder} (start one with `make cluster`)"
    lines = [f"{name}: pid {pid}" for name, pid in alive.items()]
    scheduler_file = folder / SCHEDULER_FILE
    if scheduler_file.is_file():
        from distributed import Client

        with Client(scheduler_file=str(scheduler_file), timeout=5, set_as_default=False) as client:
            info = client.scheduler_info(n_workers=-1)
            lines.append(
                f"scheduler {info['address']}, dashboard {client.dashboard_link}, {len(info['workers'])} workers: "
                + ", ".join(sorted(info["workers"]))
            )
    return "\n".join(lines)

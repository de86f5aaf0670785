"""Where the heavy work runs: in this process, or on a Dask cluster (``params.yaml`` ``compute``).

The embedding and selection steps split their work into tasks (an embedding shard, a shard of the
pool's rows in an ActiveFT iteration, one cluster's IDC) and hand them to a ``Compute``:

* ``LocalCompute`` runs them in this process: selection kernels on a thread pool, one torch thread
  per task (the same arithmetic as a one-thread worker, both cores busy), embedding shards one
  after the other with every thread.
* ``DaskCompute`` submits them to a ``dask.distributed`` scheduler. A worker that dies takes its
  tasks with it; the scheduler runs them again elsewhere. A task's result depends only on its
  arguments, so where (and how often) it ran never changes a byte of the output.

What runs where is configuration, not lineage: nothing here is part of any stage's code version,
and no output records it (the run log and the asset metadata do). Tasks may keep a cache in the
process that runs them (``task_state``), e.g. a pool shard's features and owner bounds between
ActiveFT iterations; a task that finds none rebuilds it, with the same result.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import as_completed as futures_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bilaf.errors import BilafError

LOCAL = "local"
SCHEDULER_ENV = "BILAF_DASK_SCHEDULER"  # overrides compute.scheduler (e.g. written by `make team-up`)
EMBEDDING_CACHE_ENV = "BILAF_EMBEDDING_CACHE"  # overrides compute.embedding_cache
CONNECT_TIMEOUT_S = 10.0
_STATE_RUNS_KEPT = 2  # task caches of this many runs stay in a process; older ones are dropped


class ComputeUnavailableError(BilafError, ConnectionError):
    """The configured Dask scheduler cannot be reached, or has no workers."""


class TaskLostError(BilafError, RuntimeError):
    """A task was lost with its worker too often (most often: the worker ran out of memory)."""


@dataclass(frozen=True)
class Task:
    """One unit of work: ``function(*args)``, named for logs and errors.

    ``memory_bytes`` is what the task needs to hold (said when a worker dies running it);
    ``place`` is a placement hint (tasks with the same hint prefer the same worker, so that
    their ``task_state`` cache is found again); any worker may still run it.
    """

    name: str
    function: Callable[..., Any]
    args: tuple = ()
    memory_bytes: int = 0
    place: int | None = None


@dataclass
class TaskReport:
    """Where a task ran: host, process id and worker address (None in this process)."""

    host: str
    pid: int
    worker: str | None

    @classmethod
    def here(cls) -> TaskReport:
        worker = None
        with contextlib.suppress(ImportError, ValueError):
            from distributed import get_worker

            worker = get_worker().address
        return cls(host=socket.gethostname(), pid=os.getpid(), worker=worker)


class Compute:
    """Runs tasks and returns their results in task order."""

    kind: str = LOCAL

    def map(self, tasks: Sequence[Task], *, single_threaded: bool = True) -> list[Any]:
        """Run every task; results in the order of ``tasks``.

        ``single_threaded`` tasks run with one torch thread wherever they run, so that their
        floating-point results cannot depend on a thread count; others may use every thread of
        their process (only for work whose result is thread-count independent, as a test checks).
        """
        raise NotImplementedError

    def as_completed(self, tasks: Sequence[Task], *, single_threaded: bool = True) -> Iterator[tuple[int, Any]]:
        """Run every task, yielding (position, result) as each finishes (progress of long work)."""
        raise NotImplementedError

    def share(self, value: Any) -> Any:
        """``value`` as a task argument sent once to every worker (here: the value itself)."""
        return value

    def drop_state(self, run: str) -> None:
        """Forget the task caches of ``run`` wherever they were kept."""
        drop_task_state(run)

    def describe(self) -> dict[str, Any]:
        """What runs the tasks (for logs and asset metadata, never for lineage)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release connections (the cluster itself keeps running)."""

    @property
    def shares_memory(self) -> bool:
        """Whether tasks run in this process (so arrays need not be readable from a file)."""
        return self.kind == LOCAL


@dataclass
class LocalCompute(Compute):
    """Tasks in this process: single-threaded tasks on ``threads`` threads, one torch thread each."""

    threads: int = field(default_factory=lambda: _torch().get_num_threads())

    def map(self, tasks: Sequence[Task], *, single_threaded: bool = True) -> list[Any]:
        if not single_threaded:
            return [task.function(*task.args) for task in tasks]
        results: list[Any] = [None] * len(tasks)
        for position, result in self.as_completed(tasks):
            results[position] = result
        return results

    def as_completed(self, tasks: Sequence[Task], *, single_threaded: bool = True) -> Iterator[tuple[int, Any]]:
        if not single_threaded:
            for position, task in enumerate(tasks):
                yield position, task.function(*task.args)
            return
        with torch_threads(1):
            pool = ThreadPoolExecutor(max(1, self.threads), initializer=_one_torch_thread_here)
            try:
                running = {pool.submit(task.function, *task.args): position for position, task in enumerate(tasks)}
                for future in futures_completed(running):
                    yield running[future], future.result()
            finally:  # a failed (or abandoned) task: the ones not started yet never start
                pool.shutdown(wait=True, cancel_futures=True)

    def describe(self) -> dict[str, Any]:
        return {"scheduler": LOCAL, "threads": self.threads}


class DaskCompute(Compute):
    """Tasks on a ``dask.distributed`` cluster, reached at ``address`` (``tcp://host:port``) or
    through a scheduler file."""

    kind = "dask"

    def __init__(self, scheduler: str, timeout_s: float = CONNECT_TIMEOUT_S):
        try:
            from distributed import Client
        except ImportError as error:  # pragma: no cover - distributed is a dependency
            raise ComputeUnavailableError(
                f"compute.scheduler {scheduler}: dask.distributed is not installed"
            ) from error
        self.scheduler = scheduler
        is_file = not scheduler.startswith(("tcp://", "tls://", "inproc://", "ws://", "wss://"))
        if is_file and not Path(scheduler).is_file():
            raise ComputeUnavailableError(
                f"compute.scheduler {scheduler}: neither a scheduler address (tcp://host:port) nor an existing "
                "scheduler file"
            )
        address = _scheduler_address(scheduler) if is_file else scheduler
        _probe(address, scheduler)
        try:
            with _quiet_dask_logs():
                self.client = (
                    Client(scheduler_file=scheduler, timeout=timeout_s, set_as_default=False)
                    if is_file
                    else Client(scheduler, timeout=timeout_s, set_as_default=False)
                )
        except (OSError, TimeoutError) as error:
            raise ComputeUnavailableError(
                f"cannot reach the Dask scheduler at {scheduler} (compute.scheduler or ${SCHEDULER_ENV}): "
                f"{type(error).__name__}: {error}"
            ) from None
        try:
            self.client.wait_for_workers(1, timeout=timeout_s)
        except TimeoutError:
            self.client.close()
            raise ComputeUnavailableError(
                f"the Dask scheduler at {scheduler} has no workers (waited {timeout_s:g} s): start some with "
                f"`dask worker {scheduler}`"
            ) from None
        self._run = uuid.uuid4().hex[:12]
        self._count = 0

    def _workers(self) -> list[str]:
        return sorted(self.client.scheduler_info(n_workers=-1)["workers"])

    def _submit(self, tasks: Sequence[Task], single_threaded: bool) -> list[Any]:
        workers = self._workers()
        futures = []
        for task in tasks:
            self._count += 1
            placement = {}
            if task.place is not None and workers:
                placement = {"workers": [workers[task.place % len(workers)]], "allow_other_workers": True}
            futures.append(
                self.client.submit(
                    _run_task,
                    task.function,
                    task.args,
                    single_threaded,
                    key=f"bilaf-{task.name}-{self._run}-{self._count}",
                    pure=False,
                    **placement,
                )
            )
        return futures

    def map(self, tasks: Sequence[Task], *, single_threaded: bool = True) -> list[Any]:
        futures = self._submit(tasks, single_threaded)
        try:
            return self.client.gather(futures)
        except Exception as error:
            raise _lost(error, tasks, futures) from None
        finally:
            for future in futures:
                future.release()

    def as_completed(self, tasks: Sequence[Task], *, single_threaded: bool = True) -> Iterator[tuple[int, Any]]:
        from distributed import as_completed

        futures = self._submit(tasks, single_threaded)
        position = {future.key: index for index, future in enumerate(futures)}
        try:
            for future in as_completed(futures, loop=self.client.loop):
                try:
                    result = future.result()
                except Exception as error:
                    raise _lost(error, tasks, futures) from None
                yield position[future.key], result
                future.release()
        finally:
            for future in futures:
                future.cancel()

    def share(self, value: Any) -> Any:
        (future,) = self.client.scatter([value], broadcast=True, hash=False)
        return future

    def drop_state(self, run: str) -> None:
        with contextlib.suppress(Exception):  # a worker that died took its caches with it
            self.client.run(drop_task_state, run)

    def describe(self) -> dict[str, Any]:
        info = self.client.scheduler_info(n_workers=-1)
        workers = info["workers"]
        return {
            "scheduler": self.scheduler,
            "dashboard": self.client.dashboard_link,
            "workers": len(workers),
            "threads": sum(worker.get("nthreads", 0) for worker in workers.values()),
            "worker_addresses": sorted(workers),
        }

    def close(self) -> None:
        with _quiet_dask_logs():
            self.client.close()


def _scheduler_address(scheduler_file: str) -> str:
    import json

    try:
        return json.loads(Path(scheduler_file).read_text())["address"]
    except (OSError, ValueError, KeyError) as error:
        raise ComputeUnavailableError(
            f"compute.scheduler {scheduler_file} is not a Dask scheduler file: {error}"
        ) from None


def _probe(address: str, configured: str) -> None:
    """Fail at once, naming the address, when nothing listens there (the client would retry for
    its whole timeout)."""
    if not address.startswith("tcp://"):
        return
    host, _, port = address.removeprefix("tcp://").rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except (OSError, ValueError) as error:
        where = address if address == configured else f"{address} (from {configured})"
        raise ComputeUnavailableError(
            f"cannot reach the Dask scheduler at {where} (compute.scheduler or ${SCHEDULER_ENV}): {error}"
        ) from None


def _run_task(function: Callable[..., Any], args: tuple, single_threaded: bool) -> Any:
    """What a Dask worker runs: the task, with one torch thread when it asks for it."""
    if not single_threaded:
        return function(*args)
    with torch_threads(1):
        return function(*args)


def _lost(error: Exception, tasks: Sequence[Task], futures: Sequence[Any]) -> Exception:
    """A task whose worker kept dying becomes a TaskLostError naming it and what it needed."""
    from distributed.scheduler import KilledWorker

    if not isinstance(error, KilledWorker):
        return error
    key = str(getattr(error, "task", "") or (error.args[0] if error.args else ""))
    task = next((task for task, future in zip(tasks, futures) if future.key == key), None)
    if task is None:
        return TaskLostError(f"a task was lost with its worker too many times: {error}")
    return TaskLostError(
        f"task {task.name} was lost with its worker too many times (needs about "
        f"{task.memory_bytes / 2**20:,.0f} MiB): was the worker out of memory? Give workers more memory "
        "(`dask worker --memory-limit`) or use more, smaller workers"
    )


@contextlib.contextmanager
def _quiet_dask_logs() -> Iterator[None]:
    """The client logs connection retries at WARNING; our one-line error says it instead."""
    import logging

    logger = logging.getLogger("distributed")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def open_compute(scheduler: str | None, root: Path | None = None) -> Compute:
    """The Compute for a ``compute.scheduler`` value (``$BILAF_DASK_SCHEDULER`` wins when set); a
    relative scheduler file is found under ``root`` (the project folder) when given."""
    chosen = os.environ.get(SCHEDULER_ENV) or scheduler or LOCAL
    if chosen == LOCAL:
        return LocalCompute()
    if root is not None and "://" not in chosen and not Path(chosen).is_absolute():
        chosen = str(Path(root) / chosen)
    return DaskCompute(chosen)


# --- thread counts and per-process task caches -------------------------------------------------

_threads_lock = threading.Lock()


def _torch():
    import torch

    return torch


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` torch threads (the previous count is restored)."""
    torch = _torch()
    with _threads_lock:
        before = torch.get_num_threads()
        torch.set_num_threads(count)
    try:
        yield
    finally:
        with _threads_lock:
            torch.set_num_threads(before)


def _one_torch_thread_here() -> None:
    """Make the calling thread's OpenMP and MKL calls one-threaded from now on.

    torch applies its thread count to a thread only at that thread's first parallel op; an MKL call
    before it (e.g. a small matmul on arrays from numpy) runs on MKL's process-wide count, which is
    the core count here and 1 on a Dask worker (its nanny sets ``MKL_NUM_THREADS=1``). On Intel CPUs
    some sgemm shapes then give other last bits in process than on a worker.
    """
    _torch().set_num_threads(1)


_STATE: OrderedDict[str, dict[Any, Any]] = OrderedDict()
_state_lock = threading.Lock()


def task_state(run: str, key: Any, build: Callable[[], Any]) -> Any:
    """This process's cached value of ``key`` for ``run``, built by ``build()`` on first use.

    Only the caches of the latest few runs are kept, so a driver that died never leaves its
    workers holding memory for long.
    """
    with _state_lock:
        entries = _STATE.get(run)
        if entries is None:
            entries = _STATE[run] = {}
            while len(_STATE) > _STATE_RUNS_KEPT:
                _STATE.popitem(last=False)
        if key in entries:
            return entries[key]
    value = build()
    with _state_lock:
        _STATE.setdefault(run, {})[key] = value
    return value


def drop_task_state(run: str) -> None:
    with _state_lock:
        _STATE.pop(run, None)


def new_run_token() -> str:
    return uuid.uuid4().hex

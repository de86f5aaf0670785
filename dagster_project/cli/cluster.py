"""`bilaf cluster up|down|status`: a Dask scheduler and workers on this machine (127.0.0.1), for
trying `compute.scheduler` on one box; `make cluster` runs `up`."""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_FOLDER = ".cluster"  # = dagster_project.cluster.DEFAULT_FOLDER (not imported: `bilaf --help` stays fast)


def register(subparsers: argparse._SubParsersAction) -> None:
    cluster = subparsers.add_parser(
        "cluster",
        help="start, stop or show a local Dask cluster (scheduler + workers on 127.0.0.1)",
        description="`up` starts a scheduler and worker processes and writes FOLDER/scheduler.json: set "
        "`compute.scheduler` in params.yaml to that file (or export BILAF_DASK_SCHEDULER). `down` stops them by PID.",
    )
    cluster.add_argument("action", choices=("up", "down", "status"))
    cluster.add_argument("--folder", type=Path, default=Path(DEFAULT_FOLDER), help="default: %(default)s")
    cluster.add_argument("--workers", type=int, default=2, help="worker processes (default: %(default)s)")
    cluster.add_argument("--threads", type=int, default=1, help="threads per worker (default: %(default)s)")
    cluster.add_argument(
        "--memory-limit", default="auto", help="per worker, e.g. 4GiB (default: %(default)s: the machine's share)"
    )
    cluster.set_defaults(handler=_cluster)


def _cluster(args: argparse.Namespace) -> int:
    from dagster_project.cluster import start_cluster, status, stop_cluster

    if args.action == "up":
        started = start_cluster(args.folder, args.workers, args.threads, args.memory_limit)
        print(
            f"Dask scheduler {started.address} (dashboard {started.dashboard}) with {args.workers} workers x "
            f"{args.threads} thread(s).\nUse it: compute.scheduler: {started.scheduler_file} in params.yaml, or "
            f"export BILAF_DASK_SCHEDULER={started.scheduler_file}. Stop it: `bilaf cluster down`."
        )
    elif args.action == "down":
        stopped = stop_cluster(args.folder)
        print("stopped " + ", ".join(stopped) if stopped else f"no cluster was running from {args.folder}")
    else:
        print(status(args.folder))
    return 0

"""`bilaf team up|down|status`: a team's services on this machine (Postgres, an S3 object store,
an MLflow server, the Dagster webserver and daemon, a Dask cluster), bound to 127.0.0.1;
`make team-up` runs `up`."""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_FOLDER = ".team"  # = dagster_project.team.DEFAULT_FOLDER (not imported: `bilaf --help` stays fast)


def register(subparsers: argparse._SubParsersAction) -> None:
    team = subparsers.add_parser(
        "team",
        help="start, stop or show the team's services on this machine (Dagster on Postgres, MLflow server, S3)",
        description="`up` starts every service with its data under FOLDER, writes FOLDER/team.env (source it) and "
        "the DVC remote `team`, waits until each answers and prints the URLs; `down` stops them by PID, data kept.",
    )
    team.add_argument("action", choices=("up", "down", "status"))
    team.add_argument("--folder", type=Path, default=Path(DEFAULT_FOLDER), help="default: %(default)s")
    team.add_argument("--no-cluster", action="store_true", help="without the Dask cluster (the heavy work in-process)")
    team.add_argument("--project", type=Path, default=Path.cwd(), help="project folder (default: cwd)")
    team.set_defaults(handler=_team)


def _team(args: argparse.Namespace) -> int:
    from dagster_project.team import start_team, status, stop_team

    folder = args.folder if args.folder.is_absolute() else args.project / args.folder
    if args.action == "up":
        started = start_team(args.project, folder, cluster=not args.no_cluster)
        print("\n".join(f"{name}: {url}" for name, url in started.urls.items()))
        print(
            f"Use them: source {started.env_file} (then `bilaf run`, or `bilaf run --queue`). Stop: `make team-down`."
        )
    elif args.action == "down":
        stopped = stop_team(folder)
        print("stopped " + ", ".join(stopped) if stopped else f"no team services were running from {folder}")
    else:
        print(status(folder))
    return 0

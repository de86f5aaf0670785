"""What the team's services cost: `bilaf team up` from nothing, a no-change `bilaf run` and a penalty
change through them against the embedded default (one run each, side by side, same params, same
machine, each timed as the user's wall clock of the whole command), and DVC push / fetch MB/s of a
project's pool to the object store.

    .venv/bin/python benchmarks/team_services.py --train-size 10000 --test-size 2000

Two fresh projects (git + DVC, the repository's dvc.yaml) are built in a temporary folder with the
given pool size; the default params otherwise, finetuning 1 epoch (it is the same on both sides and
not what is measured). The first `bilaf run` of each side materializes everything (its time is
printed too). No Dask cluster: the heavy work runs in process on both sides. Prints tables.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(REPO))

from bilaf.config import Params  # noqa: E402
from dagster_project.team import service_environment, start_team, stop_refresh_sensor, stop_team  # noqa: E402


def _project(root: Path, params: dict) -> Path:
    root.mkdir(parents=True)
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(REPO / name, root / name)
    (root / "bilaf").symlink_to(REPO / "bilaf")
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / ".gitignore").write_text(
        "/data/\n/labels/\n/rounds/\n/artifacts/\n/.dagster_home/\n/mlflow/\n/.cache/\n/.dvc-storage/\n/.team/\n"
    )
    dvc = str(BIN / "dvc")
    for command in (
        ["git", "init", "-q"],
        ["git", "-c", "user.email=b@example.com", "-c", "user.name=b", "commit", "-q", "--allow-empty", "-m", "init"],
        [dvc, "init", "-q"],
        [dvc, "config", "core.analytics", "false"],
        [dvc, "remote", "add", "-d", "local", str(root / ".dvc-storage")],
    ):
        subprocess.run(command, cwd=root, check=True, capture_output=True)
    return root


def _timed(command: list[str], root: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    completed = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if completed.returncode != 0:
        raise SystemExit(
            f"{' '.join(command)} failed in {root}:\n{completed.stdout[-2000:]}\n{completed.stderr[-2000:]}"
        )
    return seconds


def _set_penalty(root: Path, penalty: float) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["boundary"]["penalty"] = penalty
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _folder_mib(path: Path) -> float:
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-size", type=int, default=10000)
    parser.add_argument("--test-size", type=int, default=2000)
    args = parser.parse_args()
    params = Params().model_dump()
    params["data"].update(train_size=args.train_size, test_size=args.test_size)
    params["finetune"]["epochs"] = 1
    work = Path(tempfile.mkdtemp(prefix="bilaf-team-bench-"))
    work.chmod(0o711)  # as root, Postgres runs as the `postgres` account: it must reach .team/postgres
    base_env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "PATH": f"{BIN}:{os.environ['PATH']}",
    }
    base_env.pop("MLFLOW_TRACKING_URI", None)
    embedded, team = _project(work / "embedded", params), _project(work / "team", params)
    try:  # also when a service fails to start: what did start is stopped
        started = time.perf_counter()
        services = start_team(team, cluster=False)
        startup = time.perf_counter() - started
        # The team's sensor is stopped: the runs measured here are the ones this script starts.
        team_env = {
            **base_env,
            **service_environment(services.folder, services.ports, False),
            "BILAF_PROJECT_DIR": str(team),
        }
        stop_refresh_sensor(team, team_env)
        sides = {
            "embedded (SQLite, local folder)": (
                embedded,
                {**base_env, "DAGSTER_HOME": str(embedded / ".dagster_home"), "BILAF_PROJECT_DIR": str(embedded)},
            ),
            "team (Postgres, MLflow server, S3)": (team, team_env),
        }
        rows = {}
        for name, (root, env) in sides.items():
            print(f"{name}: first run ...", file=sys.stderr, flush=True)
            first = _timed([str(BIN / "bilaf"), "run"], root, env)
            unchanged = _timed([str(BIN / "bilaf"), "run"], root, env)
            _set_penalty(root, 1.3)
            penalty = _timed([str(BIN / "bilaf"), "run"], root, env)
            rows[name] = (first, unchanged, penalty)
        bench_remote = f"s3://bilaf/bench-{int(time.time())}"
        dvc = str(BIN / "dvc")
        for command in (
            ["remote", "add", "--local", "bench", bench_remote],
            ["remote", "modify", "--local", "bench", "endpointurl", team_env["AWS_ENDPOINT_URL"]],
            ["remote", "modify", "--local", "bench", "credentialpath", team_env["AWS_SHARED_CREDENTIALS_FILE"]],
        ):
            subprocess.run([dvc, *command], cwd=team, env=team_env, check=True, capture_output=True)
        mib, files = _folder_mib(team / "data"), sum(1 for f in (team / "data").rglob("*") if f.is_file())
        push = _timed([dvc, "push", "-q", "-r", "bench", "data.dvc"], team, team_env)
        shutil.rmtree(team / ".dvc" / "cache")
        fetch = _timed([dvc, "fetch", "-q", "-r", "bench", "data.dvc"], team, team_env)
    finally:
        stop_team(team / ".team")
    print(f"\n`bilaf team up` from nothing (no Dask cluster): {startup:.1f} s\n")
    print(f"Pool: {args.train_size} train + {args.test_size} test images; every time is one run's wall clock.\n")
    print("| Stores | first run (s) | no-change run (s) | penalty 1.1 -> 1.3 (s) |")
    print("|---|---:|---:|---:|")
    for name, (first, unchanged, penalty) in rows.items():
        print(f"| {name} | {first:.1f} | {unchanged:.1f} | {penalty:.1f} |")
    print(f"\nDVC to the object store, data/ ({files} files, {mib:.1f} MiB):\n")
    print("| Transfer | s | MiB/s | files/s |")
    print("|---|---:|---:|---:|")
    for name, seconds in (("push", push), ("fetch (after the cache was wiped)", fetch)):
        print(f"| {name} | {seconds:.1f} | {mib / seconds:.2f} | {files / seconds:.0f} |")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

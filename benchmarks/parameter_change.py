"""What a parameter change costs: `bilaf run` on a fresh clone of the default project, then two
`boundary.penalty` changes (1.1 -> 1.2 -> 1.3). In round 1 every pick is an ActiveFT core
(`core.n_cores` = budget), so the penalty cannot change the batch: the ideal re-runs the selection,
re-issues the same batch and trains nothing.

A fresh clone of ``--ref`` (default HEAD) with this checkout's .venv and .venv-dvc linked in, its
own code on PYTHONPATH. Prints one row per run: seconds, the stages computed and those carried over
(`reused, not recomputed`), and how many `bilaf-finetuned` model versions MLflow holds after it:

    .venv/bin/python benchmarks/parameter_change.py --ref 1b85c4b   # about 6 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from fresh_clone import REPO, fresh_clone

STAGE_LINE = re.compile(r"^([a-z_]+) +\d+\.\d s  (.*)$")
PENALTIES = ("1.1", "1.2", "1.3")


def _bilaf_run(project: Path, env: dict[str, str]) -> tuple[float, list[str], list[str]]:
    """Seconds, the stages computed and the stages carried over."""
    started = time.perf_counter()
    completed = subprocess.run(
        [str(project / ".venv" / "bin" / "bilaf"), "run"], cwd=project, env=env, capture_output=True, text=True
    )
    seconds = time.perf_counter() - started
    if completed.returncode != 0:
        raise SystemExit(f"bilaf run failed:\n{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}")
    computed, carried = [], []
    for match in filter(None, map(STAGE_LINE.match, completed.stdout.splitlines())):
        (carried if "reused, not recomputed" in match.group(2) else computed).append(match.group(1))
    return seconds, computed, carried


def _model_versions(project: Path) -> int:
    with sqlite3.connect(project / "mlflow" / "mlflow.db") as database:
        (count,) = database.execute("select count(*) from model_versions where name = 'bilaf-finetuned'").fetchone()
    return int(count)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", default="HEAD", help="the commit to clone (default: %(default)s)")
    args = parser.parse_args()
    with fresh_clone(args.ref) as (project, env):
        params = project / "params.yaml"
        rows = []
        for before, after in zip((None, *PENALTIES), PENALTIES):
            if before is not None:
                text = params.read_text()
                assert re.search(rf"^  penalty: {re.escape(before)}\b", text, flags=re.M), f"penalty is not {before}"
                params.write_text(
                    re.sub(rf"^  penalty: {re.escape(before)}\b", f"  penalty: {after}", text, flags=re.M)
                )
            case = "first run" if before is None else f"boundary.penalty {before} -> {after}"
            seconds, computed, carried = _bilaf_run(project, env)
            rows.append((case, seconds, computed, carried, _model_versions(project)))
            print(f"{case}: {seconds:.0f} s", file=sys.stderr, flush=True)
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", args.ref], capture_output=True, text=True)
    print(f"ref {commit.stdout.strip()}\n")
    print("| case | seconds | computed | carried over | model versions after |")
    print("| --- | --- | --- | --- | --- |")
    for case, seconds, computed, carried, versions in rows:
        print(f"| {case} | {seconds:.0f} | {', '.join(computed) or '-'} | {', '.join(carried) or '-'} | {versions} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

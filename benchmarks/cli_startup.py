"""How long `bilaf --help` and every `bilaf <command> --help` take, each in a fresh interpreter.

Median of ``--repeats`` runs (default 5) of ``python -c "from dagster_project.cli import main; main()"``
with the arguments, the way the `bilaf` entry point starts; prints a markdown table. Target: < 1 s each.

    .venv/bin/python benchmarks/cli_startup.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dagster_project.cli import build_parser  # noqa: E402

_ENTRY_POINT = "from dagster_project.cli import main; raise SystemExit(main())"


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path of the parser, the top level first (``()`` is plain `bilaf`)."""
    found = [path]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.extend(commands(sub, (*path, name)))
    return found


def seconds_to_help(path: tuple[str, ...], repeats: int) -> float:
    """Median wall time of `bilaf <path> --help` in a fresh interpreter."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-c", _ENTRY_POINT, *path, "--help"],
            cwd=ROOT,
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs per command (default: %(default)s)")
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}; median of {args.repeats} fresh runs each\n")
    print("| command | seconds |\n|---|---:|")
    for path in commands(build_parser()):
        print(f"| `bilaf {' '.join((*path, '--help'))}` | {seconds_to_help(path, args.repeats):.3f} |")


if __name__ == "__main__":
    main()

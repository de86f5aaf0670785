"""How much `bilaf run` prints, as a person reading a log file sees it (issue 33's targets: at most
40 lines for a first run of the default project, at most 15 for a parameter change).

A fresh clone of this repository's HEAD (the default project), with this checkout's .venv and
.venv-dvc linked in, runs `bilaf run` with stdout and stderr into a pipe (no terminal: progress
comes as plain lines), then again after `boundary.penalty` 1.1 -> 1.2. Prints a table:

    .venv/bin/python benchmarks/run_output.py          # about 5 minutes on 2 cores
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from fresh_clone import fresh_clone

PROGRESS = re.compile(r"^[^:]+: \d+/\d+ \(\d+%\)")


def _bilaf_run(project: Path, env: dict[str, str]) -> tuple[int, float, list[str]]:
    started = time.perf_counter()
    completed = subprocess.run(
        [str(project / ".venv" / "bin" / "bilaf"), "run"],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return completed.returncode, time.perf_counter() - started, completed.stdout.splitlines()


def main() -> int:
    with fresh_clone() as (project, env):
        rows = [("first run", *_bilaf_run(project, env))]
        params = project / "params.yaml"
        text = params.read_text()
        assert re.search(r"^  penalty: 1\.1\b", text, flags=re.M), "the default penalty is no longer 1.1"
        params.write_text(re.sub(r"^  penalty: 1\.1\b", "  penalty: 1.2", text, flags=re.M))
        rows.append(("boundary.penalty 1.1 -> 1.2", *_bilaf_run(project, env)))
    print("| case | exit | seconds | lines | of which progress |")
    print("| --- | --- | --- | --- | --- |")
    for case, code, seconds, lines in rows:
        progress = sum(bool(PROGRESS.match(line)) for line in lines)
        print(f"| {case} | {code} | {seconds:.0f} | {len(lines)} | {progress} |")
    for case, _, _, lines in rows:
        print(f"\n{case}:\n" + "\n".join(f"    {line}" for line in lines))
    return 0 if all(code == 0 for _, code, _, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

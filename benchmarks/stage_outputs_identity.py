"""Does a change leave every stage's output byte-identical? Runs the whole pipeline's stages at an
earlier commit (the baseline) and with the working tree, on copies of the same project inputs, and
compares every output file by sha256.

    .venv/bin/python benchmarks/stage_outputs_identity.py --project . --baseline 9502e99

``--project``: a folder holding ``params.yaml`` and a prepared pool ``data/`` (and ``labels/`` when
the params import labels), such as this repository after ``make run``. Its files are copied, never
written. Each tree runs ``bilaf.stages.run_stage`` for every stage in pipeline order in a fresh
subprocess (no Dagster, MLflow or DVC: only the stage code is compared), with the same
environment, so thread counts and CPU kernels are the same for both. Prints one row per output
file (``same``, ``differs``, or on one side only), and the stages' seconds; exits 1 when any file
differs.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
INPUTS = ("params.yaml", "data", "labels")
RUN_STAGES = r"""
import json, os, sys, time
import bilaf.stages
from bilaf.stages import STAGES, run_stage
# The tree under test is the cwd (first on sys.path for -c) and PYTHONPATH: its own stage code must run.
assert bilaf.stages.__file__.startswith(os.environ["PYTHONPATH"]), bilaf.stages.__file__
seconds = {}
for name in STAGES:
    started = time.perf_counter()
    run_stage(name, sys.argv[1])
    seconds[name] = round(time.perf_counter() - started, 1)
print(json.dumps(seconds))
"""


def _export(ref: str, into: Path) -> Path:
    into.mkdir(parents=True)
    tree = subprocess.run(
        ["git", "-C", str(REPO), "ls-tree", ref, "bilaf/stages", "bilaf/stages.py"], capture_output=True, text=True
    )
    if not tree.stdout.strip():
        raise SystemExit(f"{ref} has no bilaf/stages (before the package split): its stages cannot run here")
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def _project_copy(source: Path, into: Path) -> Path:
    into.mkdir(parents=True)
    for name in INPUTS:
        path = source / name
        if path.is_dir():
            shutil.copytree(path, into / name, symlinks=True)
        elif path.is_file():
            shutil.copy2(path, into / name)
    if not (into / "params.yaml").is_file() or not (into / "data" / "manifest.csv").is_file():
        raise SystemExit(f"{source} needs params.yaml and a prepared data/ (run `make run` first)")
    return into


def _run(code: Path, project: Path, extra_environment: dict[str, str] | None = None) -> dict[str, float]:
    import json

    environment = {**os.environ, **(extra_environment or {}), "PYTHONPATH": str(code), "HF_HUB_OFFLINE": "1"}
    print(f"running every stage with the code in {code} ...", file=sys.stderr, flush=True)
    completed = subprocess.run(
        [sys.executable, "-c", RUN_STAGES, str(project)], cwd=code, env=environment, capture_output=True, text=True
    )
    if completed.returncode != 0:
        raise SystemExit(f"the stages failed with the code in {code}:\n{completed.stderr[-4000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _hashes(project: Path) -> dict[str, str]:
    """sha256 of every file the stages wrote (artifacts/ and rounds/), by relative path."""
    found = {}
    for folder in ("artifacts", "rounds"):
        for file in sorted((project / folder).rglob("*")):
            if file.is_file():
                found[file.relative_to(project).as_posix()] = hashlib.sha256(file.read_bytes()).hexdigest()
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=Path, default=REPO, help="folder with params.yaml and data/")
    parser.add_argument("--baseline", required=True, help="a git ref of this repository")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bilaf-identity-") as scratch_name:
        scratch = Path(scratch_name)
        trees = {f"baseline {args.baseline}": _export(args.baseline, scratch / "baseline"), "working tree": REPO}
        hashes, seconds = {}, {}
        for label, code in trees.items():
            project = _project_copy(args.project.resolve(), scratch / f"project-{len(hashes)}")
            seconds[label] = _run(code, project)
            hashes[label] = _hashes(project)
    before, after = hashes.values()
    rows = []
    for path in sorted(set(before) | set(after)):
        if path not in after:
            verdict = "baseline only"
        elif path not in before:
            verdict = "working tree only"
        else:
            verdict = "same" if before[path] == after[path] else "differs"
        rows.append((path, verdict))
    width = max(len(path) for path, _ in rows)
    print(f"| {'output file'.ljust(width)} | verdict |")
    print(f"| {'-' * width} | ------- |")
    for path, verdict in rows:
        print(f"| {path.ljust(width)} | {verdict} |")
    print()
    print("| stage | " + " | ".join(f"{label} (s)" for label in seconds) + " |")
    print("| --- | " + " | ".join("---" for _ in seconds) + " |")
    for stage in next(iter(seconds.values())):
        print(f"| {stage} | " + " | ".join(str(times.get(stage, "-")) for times in seconds.values()) + " |")
    same = sum(verdict == "same" for _, verdict in rows)
    print(f"\n{same} of {len(rows)} output files byte-identical")
    return 0 if same == len(rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())

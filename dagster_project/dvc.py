"""The DVC command line, run from its own venv (see the Makefile), for every caller: the Dagster
DVC resource, `bilaf ingest` and `bilaf labels import`."""
from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml


def dvc_executable() -> str:
    """The `dvc` beside this interpreter (the app venv's wrapper), else the one on PATH."""
    candidate = Path(sys.executable).with_name("dvc")
    found = str(candidate) if candidate.exists() else shutil.which("dvc")
    if not found:
        raise RuntimeError("dvc not found: run `make env` (DVC lives in .venv-dvc, wrapped as .venv/bin/dvc)")
    return found


def run_dvc(root: Path, *args: str) -> str:
    """Run `dvc ARGS` in `root`; RuntimeError with DVC's message when it fails."""
    completed = subprocess.run([dvc_executable(), *args], cwd=root, capture_output=True, text=True)
    if completed.returncode != 0:
        message = completed.stderr.strip() or completed.stdout.strip() or f"exit status {completed.returncode}"
        raise RuntimeError(f"`dvc {' '.join(args)}` failed in {root}:\n{message}")
    return completed.stdout


def is_dvc_project(root: Path) -> bool:
    return (Path(root) / ".dvc").is_dir()


def md5_of(entry: Mapping[str, Any]) -> str:
    """The hash DVC recorded for one `outs`/`deps` entry (`md5`, or `hash` in newer files)."""
    return str(entry.get("md5") or entry.get("hash") or "")


def track(root: Path, target: str) -> str | None:
    """`dvc add TARGET` (a no-op when unchanged) in a DVC project; returns the recorded hash.

    Outside a DVC project (a plain folder) nothing is recorded and None is returned.
    """
    root = Path(root)
    if not is_dvc_project(root):
        return None
    run_dvc(root, "add", "-q", target)
    return tracked_hash(root, target)


def tracked_hash(root: Path, target: str) -> str | None:
    """The hash in TARGET.dvc, or None when TARGET is not tracked by a .dvc file."""
    dvc_file = Path(root) / f"{target}.dvc"
    if not dvc_file.is_file():
        return None
    return md5_of(yaml.safe_load(dvc_file.read_text())["outs"][0])

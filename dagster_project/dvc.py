"""The DVC command line, run from its own venv (see the Makefile), for every caller: the Dagster
DVC resource, `bilaf ingest` and `bilaf labels import`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from bilaf.errors import InvalidInputError


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


def locked_stage(root: Path, stage: str) -> dict[str, Any]:
    """A stage's entry in dvc.lock (its deps, params and outs as last recorded)."""
    lock = Path(root) / "dvc.lock"
    stages = yaml.safe_load(lock.read_text())["stages"] if lock.is_file() else {}
    if stage not in stages:
        raise InvalidInputError(f"{lock} records no stage {stage!r}: it has not run (or dvc.lock was reset)")
    return stages[stage]


def stage_output_hash(root: Path, stage: str) -> str:
    """The hash dvc.lock records for a stage's (single) output."""
    return md5_of(locked_stage(root, stage)["outs"][0])


def stage_dependency_hashes(root: Path, stage: str) -> dict[str, str]:
    """{dependency path: hash} as dvc.lock records them for a stage."""
    return {dep["path"]: md5_of(dep) for dep in locked_stage(root, stage).get("deps", [])}


REMOTE_ENV = "BILAF_DVC_REMOTE"  # the remote runs push to and read from (written by `make team-up`)


def project_remote(root: Path) -> tuple[str, str | None, str | None] | None:
    """The DVC remote of the project's runs as (name, url, endpoint url): $BILAF_DVC_REMOTE if set,
    else the default remote; None when neither is configured."""
    import configparser

    config = configparser.ConfigParser()
    config.read([Path(root) / ".dvc" / "config", Path(root) / ".dvc" / "config.local"])
    remote = os.environ.get(REMOTE_ENV) or config.get("core", "remote", fallback=None)
    if remote is None:
        return None
    # DVC writes the section as ['remote "name"'] (quotes included), hand-written configs as [remote "name"].
    sections = [s for s in (f"'remote \"{remote}\"'", f'remote "{remote}"') if config.has_section(s)]
    if not sections:
        raise InvalidInputError(
            f"DVC remote {remote!r} (${REMOTE_ENV} or core.remote) is not configured in {root}/.dvc"
        )
    return remote, config.get(sections[0], "url", fallback=None), config.get(sections[0], "endpointurl", fallback=None)


def push(root: Path, remote: str, target: str) -> None:
    """`dvc push TARGET` to the DVC remote named ``remote`` (the project's: see `project_remote`)."""
    run_dvc(root, "push", "-q", "-r", remote, target)


def _store_roots(root: Path) -> list[Path]:
    """Where DVC keeps objects: the project's cache, then its default remote if that is a folder."""
    root = Path(root)
    stores = [root / ".dvc" / "cache"]
    remote = project_remote(root)
    if remote is not None and remote[1] and "://" not in remote[1]:
        stores.append((root / ".dvc" / remote[1]).resolve())
    return stores


def find_object(root: Path, md5: str) -> Path | None:
    """The stored object of a file or folder (``<md5>.dir``) hash: in the cache or a folder remote,
    else fetched into the cache from the project's remote (S3 and any other DVC remote)."""
    found = _stored_locally(root, md5)
    remote = project_remote(root) if found is None else None
    if remote is not None:
        _fetch(root, remote[0], md5)
        found = _stored_locally(root, md5)
    return found


def _stored_locally(root: Path, md5: str) -> Path | None:
    name = md5.removesuffix(".dir")
    for store in _store_roots(root):
        path = store / "files" / "md5" / name[:2] / (name[2:] + (".dir" if md5.endswith(".dir") else ""))
        if path.is_file():
            return path
    return None


def _fetch(root: Path, remote: str, md5: str) -> None:
    """`dvc fetch` one version by its hash into the cache (a folder's listing and files), through a
    scratch .dvc file naming it: DVC's own transfer code, for whatever the remote is."""
    import tempfile

    scratch = Path(tempfile.mkdtemp(prefix=".bilaf-fetch-", dir=root))
    try:
        (scratch / "version.dvc").write_text(yaml.safe_dump({"outs": [{"md5": md5, "path": "version", "hash": "md5"}]}))
        completed = subprocess.run(
            [dvc_executable(), "fetch", "-q", "-r", remote, str(scratch / "version.dvc")],
            cwd=root,
            capture_output=True,
            text=True,
        )
        if completed.returncode != 0 and "missing" not in (completed.stderr + completed.stdout).lower():
            raise RuntimeError(
                f"`dvc fetch` of version {md5} from remote {remote!r} failed: {completed.stderr.strip()}"
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def restore(root: Path, md5: str, target: Path, only: set[str] | None = None) -> None:
    """Copy the version ``md5`` of a DVC-tracked file or folder from the store into ``target``
    (only the relative paths in ``only``, for a folder, when given). ValueError when the version
    is no longer stored (was `dvc gc` run?)."""
    import json
    import shutil

    listing = find_object(root, md5)
    if listing is None:
        raise InvalidInputError(
            f"DVC version {md5} is in neither the cache nor the remote of {root} "
            "(was `dvc gc` run, or the remote not pulled?)"
        )
    target = Path(target)
    if not md5.endswith(".dir"):
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(listing, target)
        return
    for entry in json.loads(listing.read_text()):
        if only is not None and entry["relpath"] not in only:
            continue
        restore(root, entry["md5"], target / entry["relpath"])


def dvc_input_tag(path: str) -> str:
    """The MLflow tag holding the DVC version of ``path`` (a stage's dependency) that a run read."""
    return f"dvc_input:{path}"


DVC_YAML_HEADER = """\
# Rendered from the stage table (bilaf/stages/table.py) by `bilaf dvc-yaml` (`make dvc-yaml`): edit
# the table, never this file; a test fails when the two differ. The same stages as the Dagster
# assets, each run by the project's CLI: `dvc repro` and Dagster write the same artifacts byte for
# byte. The two sources are tracked by data.dvc (the pool, grown by `bilaf data sync` and
# `bilaf ingest`) and labels.dvc (`bilaf labels import`). Each stage lists its upstream outputs, its
# sources, the code it runs and its own params sections, as the Dagster assets do: `dvc repro` after
# a parameter change stops where an output comes back byte-identical. The rounds ledger (rounds/)
# persists across runs.
"""


def dvc_yaml_text() -> str:
    """dvc.yaml as the stage table defines it."""
    from bilaf.stages.table import dvc_stages

    return DVC_YAML_HEADER + yaml.safe_dump({"stages": dvc_stages()}, sort_keys=False)

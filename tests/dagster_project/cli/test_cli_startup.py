"""`bilaf --help` answers at once: building the parser and every command's help load no heavy library."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster_project
from bilaf import choices

HEAVY = ("torch", "torchvision", "timm", "dagster", "mlflow", "sklearn", "scipy", "pandas", "numpy", "pydantic")

# In a fresh interpreter: every command's --help (sub-commands found by walking the parser), then what is loaded.
_EVERY_HELP = """
import argparse, contextlib, io, json, sys
from dagster_project.cli import build_parser, main

def commands(parser, path):
    yield path
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, [*path, name])

helped = []
for path in commands(build_parser(), []):
    with contextlib.redirect_stdout(io.StringIO()) as out:
        try:
            main([*path, "--help"])
        except SystemExit as stop:
            assert stop.code == 0 and out.getvalue().startswith("usage: bilaf"), (path, stop.code)
    helped.append(" ".join(path))
print(json.dumps({"helped": helped, "loaded": sorted({name.split(".")[0] for name in sys.modules} & set(HEAVY))}))
"""


def _run_fresh(code: str) -> dict:
    package_root = Path(dagster_project.__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(package_root), os.environ.get("PYTHONPATH", "")])}
    completed = subprocess.run(
        [sys.executable, "-c", f"HEAVY = {HEAVY!r}\n{code}"],
        cwd=package_root,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(completed.stdout.splitlines()[-1])


def test_every_help_answers_without_loading_a_heavy_library():
    report = _run_fresh(_EVERY_HELP)
    assert {"", "select", "embed", "data sync", "ingest", "stage", "run", "labels import"} <= set(report["helped"])
    assert report["loaded"] == []


def test_the_parser_offers_what_the_registries_hold():
    from bilaf.selection import CORE_METHODS, VARIANTS, list_methods

    assert list_methods() == list(choices.SELECTION_METHODS)
    assert tuple(CORE_METHODS) == choices.CORE_METHODS
    assert tuple(VARIANTS) == choices.VARIANTS

"""`bilaf` command line: one sub-command per pipeline stage, shared by DVC stages and users."""
from __future__ import annotations

import argparse
import importlib
import sys

# sub-command name -> module under dagster_project.cli defining `register(subparsers)`.
_COMMAND_MODULES = ("data", "embed", "select", "pipeline", "labels")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bilaf", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in _COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except ValueError as error:
        print(f"bilaf {args.command}: error: {error}", file=sys.stderr)
        return 2

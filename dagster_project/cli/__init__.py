"""`bilaf` command line: one sub-command per pipeline stage, shared by DVC stages and users."""

from __future__ import annotations

import argparse
import errno
import importlib
import sys

from bilaf.errors import BilafError

# sub-command name -> module under dagster_project.cli defining `register(subparsers)`.
_COMMAND_MODULES = ("data", "embed", "select", "pipeline", "labels", "cluster", "team")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bilaf", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in _COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


# Failures of the machine rather than of the code: reported in one line, not as a traceback.
_ENVIRONMENT_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except BilafError as error:  # the user can fix it: one line; anything else is a bug, traceback kept
        print(f"bilaf {args.command}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        if error.errno not in _ENVIRONMENT_ERRORS:
            raise
        print(f"bilaf {args.command}: error: {error}; the last finished outputs are unchanged", file=sys.stderr)
        return 1

"""`bilaf data prepare`: write the deterministic image pool (images + manifest + report)."""
from __future__ import annotations

import argparse
from pathlib import Path

from dagster_project.features.datasets import (
    DEFAULT_TEST_SIZE,
    DEFAULT_TRAIN_SIZE,
    ON_UNREADABLE,
    SOURCES,
    prepare_pool,
)


def _size(text: str) -> int | None:
    """A pool size: a non-negative integer, or 'all'."""
    if text.lower() == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer or 'all', got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer or 'all', got {text!r}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="prepare the image pool")
    actions = data.add_subparsers(dest="data_command", required=True)
    prepare = actions.add_parser(
        "prepare", help="draw a deterministic, stratified pool from a source and write it as PNGs",
        description="Write <out>/images/<split>/<id>.png, <out>/manifest.csv and <out>/pool_report.json. "
                    "Re-running with the same arguments rewrites nothing.")
    prepare.add_argument("--source", choices=SOURCES, default="fashion-mnist", help="default: %(default)s")
    prepare.add_argument("--root", type=Path, default=None,
                         help="where the source's files are (image-folder: the folder; Fashion-MNIST: "
                              "default /usr/share/datasets/fashion-mnist)")
    prepare.add_argument("--out", type=Path, default=Path("data"), help="pool directory (default: %(default)s)")
    prepare.add_argument("--train-size", type=_size, default=DEFAULT_TRAIN_SIZE,
                         help="train items to draw, or 'all' (default: %(default)s)")
    prepare.add_argument("--test-size", type=_size, default=DEFAULT_TEST_SIZE,
                         help="test items to draw, or 'all' (default: %(default)s)")
    prepare.add_argument("--seed", type=int, default=0, help="sampling seed (default: %(default)s)")
    prepare.add_argument("--on-unreadable", choices=ON_UNREADABLE, default="skip",
                         help="skip unreadable files (listed in the report) or fail (default: %(default)s)")
    prepare.set_defaults(handler=_prepare)


def _prepare(args: argparse.Namespace) -> int:
    report = prepare_pool(args.source, args.out, root=args.root, train_size=args.train_size,
                          test_size=args.test_size, seed=args.seed, on_unreadable=args.on_unreadable)
    selected = ", ".join(f"{split} {count}" for split, count in report.selected.items())
    print(f"pool in {args.out}: {selected}; scanned {report.scanned}, unreadable "
          f"{len(report.unreadable)}, duplicates {len(report.duplicates)} (see pool_report.json); "
          f"files written {report.files_written}, removed {report.files_removed}")
    return 0
